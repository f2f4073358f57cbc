"""The train stage under torchrun: 2 CPU ranks, ZeRO-2 and ZeRO-3, launched as the operator renders.

Each run executes the rendered train Job's container (`gpusPerNode: 2`) as a local process: its
`command` + `args` verbatim except the mounted spec path (a local file here), with the rendered
`PET_*` launcher variables and attempt id (the other variables name pod mounts). Votes and labels
come from the real vote and rank stages (in this process) on the tiny model. The resume test
SIGKILLs rank 0 once the stage logs its first complete checkpoint (an event read from its stderr,
not a sleep), checks that torchrun stopped the other rank, and starts the operator's next attempt,
which must end with the uninterrupted run's weights.

The first DeepSpeed use on a machine compiles a CPU op (~130 s, cached afterwards).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from evoquality_operator import jobs
from evoquality_operator.reconcile import StageKey

from evoquality import artifacts
from evoquality.spec import parse_spec
from evoquality.stages import StageArgs, run_stage
from evoquality.storage import open_store
from tests.e2e.test_stages_s3 import tiny_spec, weights

# a launch may pay the DeepSpeed op build (minutes on a loaded machine)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]
TEMPLATE = "labelled"
LAUNCH_TIMEOUT_S = 600
LAUNCHED: list[subprocess.Popen] = []
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# vLLM rollouts: 3 "GPUs" = 2 trainer ranks + 1 for the server; top-k off, so vLLM's log-probs
# equal the trainer's (docs/training.md)
VLLM_ROLLOUTS = {"gpusPerNode": 3, "topK": 0, "rollouts": {"engine": "vllm"}}


def train_spec(model_dir: Path, storage: Path, deepspeed: str, vllm: bool = False) -> dict:
    spec = tiny_spec(model_dir, "syniqa:train?size=56", str(storage))
    # 16 rows, 2 pairs per step over 2 ranks: 4 steps = one epoch; checkpoints at 2 and 4
    spec["training"].update(
        {"deepspeed": deepspeed, "gpusPerNode": 2, "maxSteps": 4, "saveSteps": 2}
    )
    if vllm:
        spec["training"].update(VLLM_ROLLOUTS)
    return spec


def stop(proc: subprocess.Popen) -> None:
    """Stop a torchrun and its workers (SIGTERM: torchrun stops them; then SIGKILL all)."""
    import psutil  # (accelerate's and DeepSpeed's dependency)

    if proc.poll() is not None:
        return
    workers = psutil.Process(proc.pid).children()
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        for process in [*workers, psutil.Process(proc.pid)]:
            process.kill()
        proc.wait()


@pytest.fixture(scope="module", autouse=True)
def stop_leftovers():
    """A test stopped half-way (a failed assertion, pytest-timeout) leaves no torchrun behind."""
    yield
    while LAUNCHED:
        stop(LAUNCHED.pop())


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def new_run(tmp_path_factory, tiny_model_dir, cache):
    """`new_run(deepspeed, name)`: a run `name` with round 0's votes and labels, and its spec
    file (one storage per ZeRO stage; the labels are made once and copied)."""
    storages: dict[tuple[str, bool], tuple[Path, Path]] = {}

    def make(deepspeed: str, name: str, vllm: bool = False) -> tuple[Path, Path]:
        if (deepspeed, vllm) not in storages:
            storage = tmp_path_factory.mktemp(f"storage-{deepspeed}")
            spec_file = storage / "spec.yaml"
            spec = train_spec(tiny_model_dir, storage, deepspeed, vllm)
            spec_file.write_text(yaml.safe_dump(spec))
            template = str(storage / "default" / TEMPLATE)
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("EVOQUALITY_CACHE", str(cache))
                for shard in range(2):
                    run_stage(StageArgs("vote", template, 0, shard, 2, spec_file))
                run_stage(StageArgs("rank", template, 0, spec_file=spec_file))
            storages[deepspeed, vllm] = (storage, spec_file)
        storage, spec_file = storages[deepspeed, vllm]
        root = storage / "default" / name
        shutil.copytree(storage / "default" / TEMPLATE, root)
        return root, spec_file

    return make


def rendered_train(spec_file: Path, run: str, attempt: int) -> tuple[list[str], dict]:
    """The train container's argv and launcher env (and the rollout server's), as
    `jobs.stage_job` renders them."""
    spec = parse_spec(yaml.safe_load(spec_file.read_text()))
    context = jobs.RunContext("default", run, "uid-1", spec)
    job = jobs.stage_job(context, StageKey(0, "train"), attempt, suspend=False)
    main = job["spec"]["template"]["spec"]["containers"][0]
    argv = [*main["command"], *main["args"]]
    argv[argv.index(jobs.SPEC_FILE)] = str(spec_file)  # rewrite: the mounted spec
    env = {
        e["name"]: e["value"]
        for e in main["env"]
        if e["name"].startswith(("PET_", "EVOQUALITY_ATTEMPT_ID", "EVOQUALITY_ROLLOUT"))
    }
    return argv, env


def launch(
    root: Path, spec_file: Path, cache: Path, attempt: int, **env_overrides: str
) -> subprocess.Popen:
    argv, launcher_env = rendered_train(spec_file, root.name, attempt)
    assert argv[:4] == ["torchrun", "--no-python", "--", "evoquality"]
    assert argv[argv.index("--run") + 1] == str(root)
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(launcher_env)
    env.update(
        HF_HUB_OFFLINE="1",
        EVOQUALITY_CACHE=str(cache),
        # torchrun and evoquality from the venv, but the same `ninja` as the rest of the suite:
        # the DeepSpeed op rebuilds (minutes) whenever another ninja version built it last
        PATH=f"{env.get('PATH', '')}{os.pathsep}{Path(sys.executable).parent}",
    )
    env.update(env_overrides)
    proc = subprocess.Popen(
        argv, env=env, cwd=root.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    LAUNCHED.append(proc)
    return proc


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop(proc)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT_S} s:\n{err[-4000:]}")
    assert proc.returncode == 0, err[-20000:]
    return out, err


def kill_rank_after_first_checkpoint(proc: subprocess.Popen, rank: int) -> None:
    """Read the stage's stderr until it logs a complete checkpoint, then SIGKILL one rank;
    torchrun must then stop the other rank and fail."""
    import psutil

    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in proc.stderr:
            lines.put(line)
        lines.put("")  # the end

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    seen: list[str] = []
    while not seen or "checkpoint-2 complete" not in seen[-1]:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0))
        except queue.Empty:
            pytest.fail("no checkpoint within the deadline")
        assert line, "training ended before a checkpoint:\n" + "".join(seen[-40:])
        seen.append(line)
    workers = psutil.Process(proc.pid).children()  # torchrun starts each in a session of its own
    (victim,) = [w for w in workers if w.environ().get("RANK") == str(rank)]
    victim.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=LAUNCH_TIMEOUT_S) != 0
    reader.join()
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def summary_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith('{"stage"')]


def check_committed(root: Path, stdout: str) -> dict:
    """Both ranks printed the one committed summary; one attempt wrote under the stage."""
    store = open_store(str(root))
    summary = artifacts.read_summary(store, "train", 0)
    assert summary is not None
    printed = summary_lines(stdout)
    assert len(printed) == 2 and printed[0] == printed[1], stdout[-2000:]
    assert printed[0]["attempt"] == summary["attempt"]
    metrics = summary["metrics"]
    assert metrics["world_size"] == 2 and metrics["steps"] == 4
    steps_key = artifacts.resolve(store, summary, "steps.jsonl")
    logged = [json.loads(s)["step"] for s in store.get_bytes(steps_key).decode().splitlines()]
    assert logged == [1, 2, 3, 4]
    return summary


def final_weights(root: Path, summary: dict, into: Path) -> dict:
    store = open_store(str(root))
    store.get_dir(artifacts.resolve(store, summary, "checkpoint"), into)
    return weights(into)


def attempts(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "rounds" / "0" / "train").glob("attempt-*"))


@pytest.fixture(scope="module")
def zero3_uninterrupted(new_run, cache):
    root, spec_file = new_run("zero3", "uninterrupted")
    out, _ = finish(launch(root, spec_file, cache, attempt=0))
    return root, out


def test_zero2_two_ranks_commit_once(new_run, cache):
    root, spec_file = new_run("zero2", "zero2")
    out, _ = finish(launch(root, spec_file, cache, attempt=0))
    summary = check_committed(root, out)
    assert summary["metrics"]["deepspeed"] == "zero2" and summary["metrics"]["resumed"] is False
    assert attempts(root) == ["attempt-zero2-r0-train"]
    checkpoints = root / "rounds" / "0" / "train" / attempts(root)[0] / "checkpoints"
    for step in (2, 4):  # every rank's files, and the marker
        folder = checkpoints / f"checkpoint-{step}"
        assert json.loads((folder / "checkpoint-complete.json").read_text())["world_size"] == 2
        assert {p.name for p in folder.glob("rng_state_*.pth")} == {
            "rng_state_0.pth",
            "rng_state_1.pth",
        }
        assert len(list(folder.glob("global_step*/*zero_pp_rank_*optim_states.pt"))) == 2


def test_zero3_two_ranks_commit_a_loadable_model(zero3_uninterrupted, tiny_model_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    root, out = zero3_uninterrupted
    summary = check_committed(root, out)
    assert summary["metrics"]["deepspeed"] == "zero3"
    assert attempts(root) == ["attempt-uninterrupted-r0-train"]
    after = final_weights(root, summary, tmp_path / "final")
    before = weights(tiny_model_dir)
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape for k in before)  # gathered, not partitions
    assert any(not np.array_equal(before[k], after[k]) for k in before), "training changed nothing"
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "final")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_zero3_killed_after_a_checkpoint_resumes_to_the_same_weights(
    zero3_uninterrupted, new_run, cache, tmp_path
):
    root, spec_file = new_run("zero3", "killed")
    kill_rank_after_first_checkpoint(launch(root, spec_file, cache, attempt=0), rank=0)
    assert artifacts.read_summary(open_store(str(root)), "train", 0) is None

    out, err = finish(launch(root, spec_file, cache, attempt=1))  # the operator's next attempt
    summary = check_committed(root, out)  # the step log continues the killed attempt's
    assert summary["metrics"]["resumed"] is True
    assert "resuming from" in err and "checkpoint-2/" in err
    assert attempts(root) == ["attempt-killed-r0-train", "attempt-killed-r0-train-a1"]
    resumed = final_weights(root, summary, tmp_path / "resumed")
    reference_root, _ = zero3_uninterrupted
    reference_summary = artifacts.read_summary(open_store(str(reference_root)), "train", 0)
    reference = final_weights(reference_root, reference_summary, tmp_path / "reference")
    assert resumed.keys() == reference.keys()
    worst = max(float(np.max(np.abs(resumed[k] - reference[k]))) for k in reference)
    assert worst <= 1e-6, f"resumed weights differ from the uninterrupted run's by {worst}"


def test_zero3_two_ranks_with_vllm_rollouts(new_run, cache, rollout_server, tmp_path):
    """The rendered train container with `rollouts.engine: vllm`: torchrun starts 2 ZeRO-3 ranks
    (gpusPerNode 3 minus the server's 1), both ranks' rollouts come from one vLLM server (the
    sidecar's stand-in: the session's, on the same model; the rendered URL's port rewritten to
    it, the sync folder a local one), the weights are gathered from both ranks' partitions
    before each sync, and vLLM's log-probs equal the trainer's at every step."""
    from evoquality.rollout_server import SERVER_ENV, SYNC_DIR_ENV

    root, spec_file = new_run("zero3", "vllm", vllm=True)
    _, rendered = rendered_train(spec_file, root.name, 0)
    assert rendered["PET_NPROC_PER_NODE"] == "2" and rendered[SERVER_ENV].endswith(":8000")
    overrides = {SERVER_ENV: rollout_server, SYNC_DIR_ENV: str(tmp_path)}
    out, _ = finish(launch(root, spec_file, cache, 0, **overrides))
    summary = check_committed(root, out)
    metrics = summary["metrics"]
    assert metrics["rollout_engine"] == "vllm" and metrics["weight_syncs"] == 4
    store = open_store(str(root))
    lines = store.get_bytes(artifacts.resolve(store, summary, "steps.jsonl")).decode()
    diffs = [json.loads(line)["rollout_logp_diff_max"] for line in lines.splitlines()]
    assert len(diffs) == 4 and max(diffs) < 1e-3, diffs
