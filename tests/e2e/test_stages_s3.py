"""The four stage commands end to end on S3 (moto's server) with the tiny model, and bad input.

vote (2 shards) -> rank -> train (2 GRPO steps) -> eval -> vote of round 1 with the round-0
checkpoint, every artifact going through a real S3 endpoint.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from evoquality import artifacts
from evoquality.stages import StageArgs, StageError, run_stage
from evoquality.storage import open_store
from tests.plugins.tiny_model import tiny_model_spec


def tiny_spec(model_dir, manifest, storage, **overrides):
    spec = {
        "seed": 1,
        "model": tiny_model_spec(model_dir),
        "data": {"manifest": manifest, "maxImages": 12, "augmentation": None},
        "rounds": 2,
        "voting": {"pairsPerRound": 8, "votesPerPair": 2, "shards": 2, "maxNewTokens": 12},
        "training": {
            "numGenerations": 2,
            "perDeviceBatchSize": 4,
            "maxSteps": 2,
            "maxCompletionLength": 12,
            "learningRate": 1e-3,
            "lrScheduler": "constant",
            "deepspeed": "none",
            "saveSteps": 1,
            "gradientCheckpointing": False,
        },
        "evaluation": {
            "benchmarks": [{"name": "heldout", "manifest": "syniqa:test?size=56", "maxImages": 8}],
            "maxNewTokens": 12,
        },
        "storage": {"uri": storage},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def weights(model_dir):
    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOQUALITY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.slow
def test_round_trip_on_s3(tmp_path, cache, s3_bucket, tiny_model_dir):
    spec_file = tmp_path / "spec.yaml"
    spec = tiny_spec(tiny_model_dir, "syniqa:train?size=56", s3_bucket.uri)
    spec_file.write_text(yaml.safe_dump(spec))
    root = f"{s3_bucket.uri}/default/e2e"

    votes = [run_stage(StageArgs("vote", root, 0, i, 2, spec_file)) for i in range(2)]
    assert sum(v["metrics"]["pairs"] for v in votes) == 8
    rank = run_stage(StageArgs("rank", root, 0, spec_file=spec_file))
    assert rank["metrics"]["labels"] > 0
    train = run_stage(StageArgs("train", root, 0, spec_file=spec_file))
    assert train["metrics"]["steps"] == 2
    assert np.isfinite(train["metrics"]["reward_mean"]) and np.isfinite(train["metrics"]["loss"])
    assert train["metrics"]["beta"] == 0.05 and train["metrics"]["bf16"] is False

    store = open_store(root)
    checkpoint = tmp_path / "checkpoint"
    store.get_dir(artifacts.resolve(store, train, "checkpoint"), checkpoint)
    before, after = weights(tiny_model_dir), weights(checkpoint)
    assert before.keys() == after.keys()
    assert any(not np.array_equal(before[k], after[k]) for k in before), "GRPO changed nothing"
    steps = store.get_bytes(artifacts.resolve(store, train, "steps.jsonl")).decode().splitlines()
    assert [json.loads(s)["step"] for s in steps] == [1, 2]

    evaluation = run_stage(StageArgs("eval", root, 0, spec_file=spec_file))
    for key in ("heldout.srcc", "heldout.plcc", "heldout.krcc"):
        assert key in evaluation["metrics"]
    preds = artifacts.read_table(store, artifacts.resolve(store, evaluation, "heldout.parquet"))
    assert preds.num_rows == 8 and np.isfinite(preds["pred"].to_numpy()).sum() >= 6

    vote1 = run_stage(StageArgs("vote", root, 1, 0, 2, spec_file))
    assert vote1["metrics"]["pairs"] > 0
    # round 1 voted with the round-0 checkpoint, downloaded from S3 into the model cache
    downloaded = list(cache.glob("store-*/config.json"))
    assert len(downloaded) == 1
    assert weights(downloaded[0].parent).keys() == after.keys()


def run_cli(spec_file, root, *args):
    command = [sys.executable, "-m", "evoquality.cli", "stage", *args, "--run", root]
    return subprocess.run(command + ["--spec", str(spec_file)], capture_output=True, text=True)


@pytest.mark.parametrize("problem", ["missing", "unreadable"])
def test_bad_images_fail_clearly_and_commit_nothing(tmp_path, cache, tiny_model_dir, problem):
    lines = ["image"]
    for i in range(6):
        path = tmp_path / f"img{i}.png"
        if problem == "unreadable":
            path.write_bytes(b"not a png")
        lines.append(path.name)
    (tmp_path / "pool.csv").write_text("\n".join(lines) + "\n")
    spec_file = tmp_path / "spec.yaml"
    spec = tiny_spec(tiny_model_dir, str(tmp_path / "pool.csv"), str(tmp_path / "runs"))
    spec_file.write_text(yaml.safe_dump(spec))
    root = str(tmp_path / "runs" / "default" / "bad")
    result = run_cli(spec_file, root, "vote", "--round", "0", "--shard", "0", "--num-shards", "2")
    assert result.returncode == 2, result.stderr
    assert "could not be read" in result.stderr and "img" in result.stderr
    assert artifacts.read_summary(open_store(root), "vote", 0, 0, 2) is None


def test_missing_model_path_fails_clearly(tmp_path, cache):
    spec_file = tmp_path / "spec.yaml"
    spec = tiny_spec(tmp_path / "no-such-model", "syniqa:train?size=56", str(tmp_path / "runs"))
    spec_file.write_text(yaml.safe_dump(spec))
    root = str(tmp_path / "runs" / "default" / "nomodel")
    result = run_cli(spec_file, root, "eval", "--round", "base")
    assert result.returncode == 2
    assert "no-such-model" in result.stderr
    assert artifacts.read_summary(open_store(root), "eval", None) is None


def test_zero_votes_per_pair_is_refused(tmp_path, cache):
    spec_file = tmp_path / "spec.yaml"
    spec = tiny_spec("tiny", "syniqa:train?size=56", str(tmp_path / "runs"))
    spec["voting"]["votesPerPair"] = 0
    spec_file.write_text(yaml.safe_dump(spec))
    root = str(tmp_path / "runs" / "default" / "k0")
    result = run_cli(spec_file, root, "vote", "--round", "0", "--shard", "0", "--num-shards", "2")
    assert result.returncode == 2
    assert "voting.votesPerPair" in result.stderr
    with pytest.raises(FileNotFoundError):
        open_store(root).get_bytes(artifacts.SPEC_KEY)


def test_rank_before_vote_is_refused(tmp_path, cache):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec("tiny", "x.csv", str(tmp_path / "runs"))))
    with pytest.raises(StageError, match="not committed"):
        run_stage(
            StageArgs("rank", str(tmp_path / "runs" / "default" / "r"), 0, spec_file=spec_file)
        )
