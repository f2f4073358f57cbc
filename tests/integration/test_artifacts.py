"""The artifact layout and atomic stage commits, on a file store and on S3 (moto's server)."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pytest

from evoquality.artifacts import (
    SPEC_KEY,
    StageAttempt,
    open_run_store,
    read_shard_summaries,
    read_summary,
    read_table,
    resolve,
    stage_done,
    stage_prefix,
    summary_key,
    write_table_bytes,
)
from evoquality.storage import NotFound, StoreError, open_store


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return open_store(str(tmp_path / "run"))
    return open_store(request.getfixturevalue("s3_bucket").uri)


class InjectedFailure(Exception):
    pass


def run_vote(store, attempt_id: str, fail_midway: bool = False) -> dict:
    """A stand-in stage: writes a table and a log, then commits; can die between the writes."""
    attempt = StageAttempt(store, "vote", 0, attempt_id=attempt_id)
    attempt.put_table("votes.parquet", pa.table({"pair": [0, 1], "votes_a": [3, 1]}))
    if fail_midway:
        raise InjectedFailure(attempt_id)
    attempt.put_bytes("log.txt", b"done")
    return attempt.commit({"pairs": 2})


def test_layout_keys():
    assert SPEC_KEY == "spec.json"
    assert stage_prefix("vote", 0) == "rounds/0/vote/"
    assert stage_prefix("eval", None) == "base/eval/"
    assert summary_key("train", 1) == "rounds/1/train/summary.json"
    assert summary_key("eval", None) == "base/eval/summary.json"
    assert summary_key("vote", 2, 3, 8) == "rounds/2/vote/shard-3-of-8.summary.json"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("judge", 0), "unknown stage"),
        (("rank", None), "needs a round"),
        (("vote", -1), "round must be >= 0"),
        (("vote", 0, 1, None), "give both or neither"),
        (("vote", 0, 4, 4), "out of range"),
    ],
)
def test_layout_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        summary_key(*args)


def test_attempt_prefix_and_commit(store):
    attempt = StageAttempt(store, "rank", 1, attempt_id="a1")
    assert attempt.prefix == "rounds/1/rank/attempt-a1/"
    assert attempt.key("labels.parquet") == "rounds/1/rank/attempt-a1/labels.parquet"
    attempt.put_table("labels.parquet", pa.table({"p": [1.0, 0.5]}))
    assert read_summary(store, "rank", 1) is None
    assert not stage_done(store, "rank", 1)
    committed = attempt.commit({"labels": 2})
    assert attempt.won
    assert committed["labels"] == 2
    assert committed["attempt"] == "a1"
    assert committed["objects"] == {"labels.parquet": "rounds/1/rank/attempt-a1/labels.parquet"}
    assert "committed_at" in committed
    assert read_summary(store, "rank", 1) == committed
    assert stage_done(store, "rank", 1)
    table = read_table(store, resolve(store, committed, "labels.parquet"))
    assert table.column("p").to_pylist() == [1.0, 0.5]
    with pytest.raises(RuntimeError, match="already committed"):
        attempt.put_bytes("late.txt", b"x")


def test_failure_midway_then_rerun_then_zombie_commit(store):
    with pytest.raises(InjectedFailure):
        run_vote(store, "zombie", fail_midway=True)
    assert read_summary(store, "vote", 0) is None
    assert not stage_done(store, "vote", 0)
    assert store.list("rounds/0/vote/") == ["rounds/0/vote/attempt-zombie/votes.parquet"]

    winner = run_vote(store, "rerun")
    assert winner["attempt"] == "rerun"
    assert stage_done(store, "vote", 0)

    # The zombie wakes up, finishes its writes and tries to commit: it loses, nothing is raised.
    zombie = StageAttempt(store, "vote", 0, attempt_id="zombie")
    zombie.put_bytes("log.txt", b"late")
    result = zombie.commit({"pairs": 99})
    assert zombie.won is False
    assert result == winner
    assert read_summary(store, "vote", 0) == winner
    assert resolve(store, winner, "log.txt") == "rounds/0/vote/attempt-rerun/log.txt"
    assert store.get_bytes(resolve(store, winner, "log.txt")) == b"done"


def test_concurrent_commits_have_one_winner(store):
    contenders = 6
    attempts = [StageAttempt(store, "train", 0, attempt_id=f"t{i}") for i in range(contenders)]
    results: list[dict | None] = [None] * contenders
    barrier = threading.Barrier(contenders, timeout=30)

    def commit(i: int) -> None:
        barrier.wait()
        results[i] = attempts[i].commit({"reward": float(i)})

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [a.won for a in attempts].count(True) == 1
    winner = next(a for a in attempts if a.won)
    assert all(r is not None and r["attempt"] == winner.attempt_id for r in results)
    assert read_summary(store, "train", 0)["reward"] == float(winner.attempt_id[1:])


def test_sharded_stage_is_done_when_every_shard_committed(store):
    def commit_shard(i: int) -> dict:
        attempt = StageAttempt(store, "vote", 0, shard=i, num_shards=3, attempt_id="job7")
        attempt.put_bytes(f"shard-{i}-of-3.parquet", write_table_bytes(pa.table({"s": [i]})))
        return attempt.commit({"shard_pairs": i})

    commit_shard(0)
    commit_shard(2)
    status = read_shard_summaries(store, "vote", 0, 3)
    assert status.missing == [1]
    assert not status.complete
    assert [s["shard"] for s in status.summaries] == [0, 2]
    assert not stage_done(store, "vote", 0, num_shards=3)
    with pytest.raises(StoreError, match=r"shards \[1\] of 3"):
        status.require()

    commit_shard(1)
    assert stage_done(store, "vote", 0, num_shards=3)
    summaries = read_shard_summaries(store, "vote", 0, 3).require()
    assert [s["shard_pairs"] for s in summaries] == [0, 1, 2]
    keys = [resolve(store, s, f"shard-{i}-of-3.parquet") for i, s in enumerate(summaries)]
    assert keys[1] == "rounds/0/vote/attempt-job7/shard-1-of-3/shard-1-of-3.parquet"
    assert read_table(store, keys[1]).column("s").to_pylist() == [1]


def test_directories_are_committed_as_prefixes(store, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    attempt = StageAttempt(store, "train", 0, attempt_id="d1")
    attempt.put_dir("checkpoint", ckpt)
    summary = attempt.commit({})
    prefix = resolve(store, summary, "checkpoint")
    assert prefix == "rounds/0/train/attempt-d1/checkpoint/"
    store.get_dir(prefix, tmp_path / "restored")
    assert (tmp_path / "restored" / "config.json").read_text() == "{}"


def test_resolve_errors_name_the_problem(store):
    attempt = StageAttempt(store, "eval", None, attempt_id="e1")
    summary = attempt.commit({"srcc": 0.5})
    assert attempt.prefix == "base/eval/attempt-e1/"
    with pytest.raises(KeyError, match="has no object 'syniqa.parquet'"):
        resolve(store, summary, "syniqa.parquet")
    forged = {**summary, "objects": {"gone.parquet": "base/eval/attempt-e1/gone.parquet"}}
    with pytest.raises(NotFound, match="gone"):
        resolve(store, forged, "gone.parquet")


def test_attempt_ids(monkeypatch, tmp_path):
    store = open_store(str(tmp_path))
    monkeypatch.setenv("EVOQUALITY_ATTEMPT_ID", "pod-abc")
    assert StageAttempt(store, "vote", 0).attempt_id == "pod-abc"
    monkeypatch.delenv("EVOQUALITY_ATTEMPT_ID")
    generated = {StageAttempt(store, "vote", 0).attempt_id for _ in range(5)}
    assert len(generated) == 5 and all(len(a) == 12 for a in generated)
    with pytest.raises(ValueError, match="invalid attempt id"):
        StageAttempt(store, "vote", 0, attempt_id="../escape")


def test_reserved_fields_and_corrupt_summaries(tmp_path):
    store = open_store(str(tmp_path))
    with pytest.raises(ValueError, match="reserved"):
        StageAttempt(store, "rank", 0).commit({"objects": {}})
    store.put_bytes(summary_key("rank", 0), b"{not json")
    with pytest.raises(StoreError, match=r"rounds/0/rank/summary.json is not valid JSON"):
        read_summary(store, "rank", 0)


def test_run_store_is_rooted_at_namespace_and_run(tmp_path):
    run = open_run_store(str(tmp_path), "team-a", "exp1")
    run.put_bytes(SPEC_KEY, json.dumps({"rounds": 2}).encode())
    assert (tmp_path / "team-a" / "exp1" / "spec.json").exists()
