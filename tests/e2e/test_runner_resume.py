"""The embedded runner is resumable: killed in every stage, it finishes with the same artifacts.

A small tiny-model run is killed (SIGKILL of the runner and its stage processes: a crash) as soon
as each stage starts, resumed each time, and compared with an uninterrupted run of the same
manifest. Also: Ctrl-C stops cleanly with exit 130, and the runner's metrics match the summaries.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from evoquality import artifacts
from evoquality.runner import Runner
from evoquality.spec import parse_run
from evoquality.storage import open_store
from evoquality.telemetry import RunMetrics

ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 300


def small_run(name: str) -> dict:
    smoke = yaml.safe_load((ROOT / "examples" / "smoke.yaml").read_text())
    smoke["metadata"]["name"] = name
    spec = smoke["spec"]
    spec["rounds"] = 1
    spec["data"].update({"maxImages": 12, "augmentation": None})
    spec["voting"].update({"pairsPerRound": 8, "votesPerPair": 2, "shards": 2})
    spec["training"].update({"maxSteps": 2, "saveSteps": 1})
    spec["evaluation"]["benchmarks"][0]["maxImages"] = 8
    spec["evaluation"]["samplesPerImage"] = 1
    return smoke


def _interruptible() -> None:
    """In the child: Ctrl-C as in a terminal. A test session started in the background (`cmd &`
    in a script, as CI may be) ignores SIGINT, the runner would inherit that, and Python installs
    no KeyboardInterrupt handler for a signal ignored at start-up."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(manifest: Path, workdir: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "EVOQUALITY_CACHE": str(cache)}
    command = [sys.executable, "-m", "evoquality.cli", "run", str(manifest)]
    command += ["--workdir", str(workdir), "--no-report", "--jobs", "2"]
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_interruptible,
    )


def crash(proc: subprocess.Popen) -> None:
    """SIGKILL the runner and every stage process it started."""
    family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_for(path: Path, proc: subprocess.Popen) -> bool:
    """True once `path` exists; False if the runner ended first (bounded by DEADLINE_S)."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    raise TimeoutError(f"{path} did not appear within {DEADLINE_S} s")


def table(store, stage, round_index, name, shard=None, shards=None):
    summary = artifacts.read_summary(store, stage, round_index, shard, shards)
    return artifacts.read_table(store, artifacts.resolve(store, summary, name)).to_pydict()


@pytest.mark.slow
def test_killed_in_every_stage_it_resumes_to_the_same_result(tmp_path):
    cache = tmp_path / "cache"
    manifests = {}
    for name in ("steady", "crashy"):
        manifests[name] = tmp_path / f"{name}.yaml"
        manifests[name].write_text(yaml.safe_dump(small_run(name)))

    steady = start(manifests["steady"], tmp_path / "steady", cache)
    out, err = steady.communicate(timeout=DEADLINE_S)
    assert steady.returncode == 0, err.decode()[-3000:]

    logs = tmp_path / "crashy" / "logs" / "crashy"
    killed_in = []
    for stage_log in ("vote-r0-shard0of2", "rank-r0", "train-r0", "eval-r0"):
        proc = start(manifests["crashy"], tmp_path / "crashy", cache)
        if wait_for(logs / f"{stage_log}.log", proc):
            crash(proc)
            killed_in.append(stage_log)
        else:
            proc.communicate()
    assert len(killed_in) >= 3, f"the run outpaced the kills: {killed_in}"
    final = start(manifests["crashy"], tmp_path / "crashy", cache)
    _, err = final.communicate(timeout=DEADLINE_S)
    assert final.returncode == 0, err.decode()[-3000:]

    a = open_store(str(tmp_path / "steady" / "runs" / "default" / "steady"))
    b = open_store(str(tmp_path / "crashy" / "runs" / "default" / "crashy"))
    for shard in range(2):
        assert table(a, "vote", 0, "votes.parquet", shard, 2) == table(
            b, "vote", 0, "votes.parquet", shard, 2
        )
    assert table(a, "rank", 0, "labels.parquet") == table(b, "rank", 0, "labels.parquet")
    pa_, pb = (table(s, "eval", 0, "syniqa-heldout.parquet") for s in (a, b))
    assert pa_["image"] == pb["image"]
    np.testing.assert_allclose(
        np.array(pa_["pred"], dtype=float), np.array(pb["pred"], dtype=float), atol=1e-6
    )
    steps = [artifacts.read_summary(s, "train", 0)["metrics"]["steps"] for s in (a, b)]
    assert steps[0] == steps[1]


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_metrics_follow_summaries(tmp_path):
    cache = tmp_path / "cache"
    manifest = tmp_path / "run.yaml"
    manifest.write_text(yaml.safe_dump(small_run("interrupted")))
    proc = start(manifest, tmp_path / "w", cache)
    assert wait_for(tmp_path / "w" / "logs" / "interrupted" / "rank-r0.log", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 130
    assert "run the same command again" in err.decode()

    os.environ["EVOQUALITY_CACHE"] = str(cache)
    try:
        metrics = RunMetrics()
        run = parse_run(yaml.safe_load(manifest.read_text()))
        runner = Runner(run, tmp_path / "w", jobs=2, metrics=metrics)
        outcome = runner.execute()
    finally:
        del os.environ["EVOQUALITY_CACHE"]
    assert outcome["skipped"], "the first run's finished stages must be kept"
    assert "rank-r0" in outcome["ran"] or "rank-r0" in outcome["skipped"]
    store = runner.store
    labels = artifacts.read_summary(store, "rank", 0)["metrics"]["labels"]
    sample = metrics.registry.get_sample_value
    where = {"namespace": "default", "run": "interrupted", "round": "0"}
    if "rank-r0" in outcome["ran"]:
        assert sample("evoquality_pseudo_labels", where) == labels
    srcc = artifacts.read_summary(store, "eval", 0)["metrics"]["syniqa-heldout.srcc"]
    got = sample("evoquality_eval_srcc", {**where, "benchmark": "syniqa-heldout"})
    assert got is None if srcc is None else got == pytest.approx(srcc)
    run_labels = {"namespace": "default", "run": "interrupted"}
    assert sample("evoquality_run_phase", {**run_labels, "phase": "Succeeded"}) == 1.0
    assert sample("evoquality_runs", {"namespace": "default", "phase": "Succeeded"}) == 1.0
