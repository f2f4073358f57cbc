"""The embedded runner's plan: every stage once, in an order that respects the stage contract."""

import copy

from evoquality.runner import plan_tasks, run_root
from evoquality.spec import parse_run
from tests.unit.test_spec import MINIMAL


def make_run(**spec):
    doc = copy.deepcopy(MINIMAL)
    doc["spec"].update(spec)
    return parse_run(doc)


def test_plan_covers_every_stage_and_respects_dependencies():
    run = make_run(
        rounds=3,
        voting={"shards": 3},
        evaluation={"benchmarks": [{"name": "b", "manifest": "b.csv"}]},
    )
    tasks = plan_tasks(run)
    names = [t.name for t in tasks]
    assert len(names) == len(set(names))
    assert names[0] == "eval-base"
    assert len(tasks) == 1 + 3 * (3 + 3)
    seen: set[str] = set()
    for task in tasks:
        assert set(task.deps) <= seen, f"{task.name} listed before its deps"
        seen.add(task.name)
    vote1 = next(t for t in tasks if t.name == "vote-r1-shard0of3")
    assert vote1.deps == ("train-r0",)  # eval r0 runs beside vote r1


def test_early_stopping_makes_next_vote_wait_for_eval():
    run = make_run(
        rounds=2,
        evaluation={
            "validation": {"name": "val", "manifest": "v.csv"},
            "earlyStopping": True,
        },
    )
    vote1 = next(t for t in plan_tasks(run) if t.name == "vote-r1-shard0of1")
    assert set(vote1.deps) == {"train-r0", "eval-r0"}


def test_no_benchmarks_means_no_eval_tasks():
    assert all(t.stage != "eval" for t in plan_tasks(make_run()))


def test_stage_arguments_follow_the_contract():
    run = make_run(voting={"shards": 2})
    vote = next(t for t in plan_tasks(run) if t.stage == "vote")
    assert vote.args() == ["stage", "vote", "--round", "0", "--shard", "0", "--num-shards", "2"]


def test_relative_storage_lives_in_the_workdir(tmp_path):
    run = make_run(storage={"uri": "runs"})
    assert run_root(run, tmp_path) == f"{tmp_path}/runs/default/demo"
    s3 = make_run(storage={"uri": "s3://b/p/"})
    assert run_root(s3, tmp_path) == "s3://b/p/default/demo"


def test_vllm_inference_stages_run_with_the_vllm_python(tmp_path):
    import pytest

    from evoquality.engines.vllm_env import vllm_python
    from evoquality.runner import RunError, stage_python

    assert stage_python("vote", "vllm", "/py", "/vllm-py") == "/vllm-py"
    assert stage_python("eval", "vllm", "/py", "/vllm-py") == "/vllm-py"
    assert stage_python("train", "vllm", "/py", "/vllm-py") == "/py"
    assert stage_python("vote", "transformers", "/py", None) == "/py"
    with pytest.raises(RunError, match="make vllm-venv"):
        stage_python("vote", "vllm", "/py", None)
    assert vllm_python({"EVOQUALITY_VLLM_PYTHON": "/x/python"}) == "/x/python"
    venv = tmp_path / ".venv-vllm" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").touch()
    found = vllm_python({}, root=tmp_path)
    assert found in (str(venv / "python"), __import__("sys").executable)


def test_ctrl_c_inside_a_stage_launch_is_raised_once_the_stage_is_registered():
    import os
    import signal

    import pytest

    from evoquality.runner import deferred_interrupt

    registered = []
    # as in a terminal, whatever the test session inherited (started with `&`, SIGINT is ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)  # delivered here, between Popen and registration
            registered.append("rank-r0")
        assert registered == ["rank-r0"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_ctrl_c_stays_ignored_through_a_stage_launch():
    import os
    import signal

    from evoquality.runner import deferred_interrupt

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `nohup` or `cmd &`
    try:
        with deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
