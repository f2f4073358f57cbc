"""A train stage killed after its first checkpoint resumes from it in the next attempt."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from evoquality import artifacts
from evoquality.stages import StageArgs, run_stage
from evoquality.storage import open_store
from tests.e2e.test_stages_s3 import tiny_spec

DEADLINE_S = 240


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("EVOQUALITY_CACHE", str(tmp_path / "cache"))
    spec = tiny_spec(tiny_model_dir, "syniqa:train?size=56", str(tmp_path / "runs"))
    spec["training"].update({"maxSteps": 16, "saveSteps": 2})
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    root = str(tmp_path / "runs" / "default" / "resume")
    for shard in range(2):
        run_stage(StageArgs("vote", root, 0, shard, 2, spec_file))
    run_stage(StageArgs("rank", root, 0, spec_file=spec_file))

    command = [sys.executable, "-m", "evoquality.cli", "stage", "train", "--run", root]
    command += ["--round", "0", "--spec", str(spec_file)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train_dir = tmp_path / "runs" / "default" / "resume" / "rounds" / "0" / "train"
    deadline = time.monotonic() + DEADLINE_S
    while not list(train_dir.glob("attempt-*/checkpoints/checkpoint-*/checkpoint-complete.json")):
        assert proc.poll() is None, "training ended before its first checkpoint was uploaded"
        assert time.monotonic() < deadline, "no checkpoint within the deadline"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    store = open_store(root)
    assert artifacts.read_summary(store, "train", 0) is None  # killed: nothing committed

    summary = run_stage(StageArgs("train", root, 0, spec_file=spec_file))
    assert summary["metrics"]["resumed"] is True
    steps_key = artifacts.resolve(store, summary, "steps.jsonl")
    steps = [json.loads(line)["step"] for line in store.get_bytes(steps_key).decode().splitlines()]
    assert steps == list(range(1, 17)), "the log continues the killed attempt's steps"
    assert summary["metrics"]["steps"] == 16
