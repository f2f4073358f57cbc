"""vote -> rank through the real stage code and files, with the simulated judge at scale.

The simulated judge reads `mos` as hidden truth, so these tests check that the pipeline recovers a
known ranking, that shards partition the plan, and the stage contract (summary line, no-op rerun,
spec pinning, clear errors) without a model.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from scipy.stats import spearmanr

from evoquality import artifacts
from evoquality.stages import StageArgs, StageError, run_stage
from evoquality.storage import open_store


def write_pool(path, n, seed=0):
    rng = np.random.default_rng(seed)
    mos = rng.uniform(1, 5, size=n)
    lines = ["image,mos"] + [f"img{i:06d}.png,{m:.4f}" for i, m in enumerate(mos)]
    path.write_text("\n".join(lines) + "\n")
    return mos


def simulated_spec(manifest, storage, **voting):
    return {
        "seed": 3,
        "model": {
            "base": "unused",
            "engine": "simulated",
            "simulated": {"temperature": 0.3},
            "reasoning": False,
        },
        "data": {"manifest": str(manifest), "augmentation": None},
        "rounds": 1,
        "voting": {"pairsPerRound": 1000, "votesPerPair": 4, "shards": 2, "batchSize": 4096}
        | voting,
        "ranking": {"labels": "hard"},
        "storage": {"uri": str(storage)},
    }


@pytest.fixture
def pool(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOQUALITY_CACHE", str(tmp_path / "cache"))
    return tmp_path


def run_all(root, spec_file, shards):
    for shard in range(shards):
        run_stage(StageArgs("vote", root, 0, shard, shards, spec_file))
    return run_stage(StageArgs("rank", root, 0, spec_file=spec_file))


def test_vote_rank_recovers_a_known_ranking_at_scale(pool, capsys):
    n = 100_000
    mos = write_pool(pool / "pool.csv", n)
    spec = simulated_spec(
        pool / "pool.csv", pool / "runs", pairsPerRound=300_000, sampler="balanced"
    )
    spec_file = pool / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    root = str(pool / "runs" / "default" / "big")
    rank = run_all(root, spec_file, 2)

    store = open_store(root)
    shards = artifacts.read_shard_summaries(store, "vote", 0, 2).require()
    tables = [
        artifacts.read_table(store, artifacts.resolve(store, s, "votes.parquet")) for s in shards
    ]
    pair_ids = np.concatenate([t["pair_id"].to_numpy() for t in tables])
    assert np.array_equal(pair_ids, np.arange(300_000)), "shards must partition the plan"
    assert all(t["abstain"].to_numpy().sum() == 0 for t in tables)
    assert sum(s["metrics"]["votes"] for s in shards) == 300_000 * 4

    scores = artifacts.read_table(store, artifacts.resolve(store, rank, "scores.parquet"))
    index = np.array([int(k[3:9]) for k in scores["image"].to_pylist()])
    rho = spearmanr(scores["score"].to_numpy(), mos[index]).statistic
    assert rho > 0.85, f"Bradley-Terry scores should follow the hidden truth, SRCC {rho:.3f}"
    labels = artifacts.read_table(store, artifacts.resolve(store, rank, "labels.parquet"))
    a = np.array([int(k[3:9]) for k in labels["image_a"].to_pylist()])
    b = np.array([int(k[3:9]) for k in labels["image_b"].to_pylist()])
    p = labels["p_star"].to_numpy()
    decided = p != 0.5
    accuracy = np.mean((p[decided] > 0.5) == (mos[a[decided]] > mos[b[decided]]))
    assert accuracy > 0.8
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["stage"] == "rank"


def test_stage_cli_contract(pool):
    write_pool(pool / "pool.csv", 200)
    spec = simulated_spec(pool / "pool.csv", pool / "runs", pairsPerRound=300, shards=1)
    spec_file = pool / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    root = str(pool / "runs" / "default" / "cli")
    command = [sys.executable, "-m", "evoquality.cli", "stage", "vote", "--run", root]
    command += ["--round", "0", "--num-shards", "1", "--spec", str(spec_file)]
    env = {**os.environ, "JOB_COMPLETION_INDEX": "0", "EVOQUALITY_CACHE": str(pool / "cache")}
    first = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    line = json.loads(first.stdout.strip().splitlines()[-1])
    assert line["stage"] == "vote" and line["shard"] == 0 and line["metrics"]["pairs"] == 300
    assert len(first.stdout.strip().splitlines()[-1]) <= 2048
    again = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == line  # a no-op, same summary

    spec["seed"] = 4  # a different spec must be refused
    spec_file.write_text(yaml.safe_dump(spec))
    refused = subprocess.run(command, capture_output=True, text=True, env=env)
    assert refused.returncode == 2
    assert "differs from the one this run started with" in refused.stderr


def test_rank_refuses_missing_shards(pool):
    write_pool(pool / "pool.csv", 100)
    spec_file = pool / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(simulated_spec(pool / "pool.csv", pool / "runs")))
    root = str(pool / "runs" / "default" / "missing")
    run_stage(StageArgs("vote", root, 0, 0, 2, spec_file))
    with pytest.raises(StageError, match=r"vote shards \[1\]"):
        run_stage(StageArgs("rank", root, 0, spec_file=spec_file))
    assert artifacts.read_summary(open_store(root), "rank", 0) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("image,mos\n", "no rows"),
        ("picture,mos\na.png,1\nb.png,2\n", "image"),
    ],
)
def test_bad_manifests_fail_clearly_and_commit_nothing(pool, content, message):
    (pool / "pool.csv").write_text(content)
    spec_file = pool / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(simulated_spec(pool / "pool.csv", pool / "runs")))
    root = str(pool / "runs" / "default" / "bad")
    command = [sys.executable, "-m", "evoquality.cli", "stage", "vote", "--run", root]
    command += ["--round", "0", "--shard", "0", "--num-shards", "2", "--spec", str(spec_file)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode != 0
    assert message in result.stderr.lower()
    assert artifacts.read_summary(open_store(root), "vote", 0, 0, 2) is None
