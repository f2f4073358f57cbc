"""Votes are seeded per pair and order: the vote table (sampled texts included) of the tiny model
on the transformers engine is identical for 1 or 2 shards and for small batches or whole shards,
and two runs with different seeds differ."""

from __future__ import annotations

import pyarrow as pa
import pytest
import yaml

from evoquality import artifacts
from evoquality.stages import StageArgs, run_stage
from evoquality.storage import open_store
from tests.plugins.tiny_model import tiny_model_spec

COLUMNS = ["pair_id", "image_a", "image_b", "votes_a", "votes_b", "abstain", "texts"]


def vote_table(tmp_path, model_dir, name: str, seed: int = 1, **voting) -> pa.Table:
    spec = {
        "seed": seed,
        "model": tiny_model_spec(model_dir),
        "data": {"manifest": "syniqa:train?size=56", "maxImages": 10, "augmentation": None},
        "rounds": 1,
        "voting": {"pairsPerRound": 10, "votesPerPair": 4, "maxNewTokens": 8, "keepTexts": True}
        | voting,
        "storage": {"uri": str(tmp_path / "runs")},
    }
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    root = str(tmp_path / "runs" / "default" / name)
    shards = spec["voting"].get("shards", 1)
    for shard in range(shards):
        run_stage(StageArgs("vote", root, 0, shard, shards, spec_file))
    store = open_store(root)
    summaries = artifacts.read_shard_summaries(store, "vote", 0, shards).require()
    tables = [
        artifacts.read_table(store, artifacts.resolve(store, s, "votes.parquet")) for s in summaries
    ]
    return pa.concat_tables(tables).select(COLUMNS)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOQUALITY_CACHE", str(tmp_path / "cache"))


def test_vote_table_does_not_depend_on_shards_or_batch_size(tmp_path, tiny_model_dir, cache):
    whole = vote_table(tmp_path, tiny_model_dir, "whole")
    assert whole.num_rows == 10
    assert vote_table(tmp_path, tiny_model_dir, "batch3", batchSize=3).equals(whole)
    assert vote_table(tmp_path, tiny_model_dir, "shards2", shards=2).equals(whole)
    other = vote_table(tmp_path, tiny_model_dir, "seed2", seed=2)
    assert other["texts"].to_pylist() != whole["texts"].to_pylist()
