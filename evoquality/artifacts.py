"""Where each round's and stage's artifacts live, and atomic stage commits.

A run's artifacts sit under `<storage uri>/<namespace>/<run name>/` (the run root; every `Store`
passed to this module is rooted there):

    spec.json
    rounds/<r>/<stage>/attempt-<id>/...            the files one attempt wrote
    rounds/<r>/<stage>/summary.json                the commit: metrics + the attempt's objects
    rounds/<r>/vote/shard-<i>-of-<n>.summary.json  a sharded stage: one commit per shard
    base/eval/...                                  the base model's evaluation (round None)

A stage attempt writes only under its own attempt prefix and commits last, by creating its summary
with a conditional put: the first attempt to commit wins, and readers follow the summary, so a
half-written or zombie attempt is never read.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from evoquality.storage import NotFound, Store, StoreError, open_store

SPEC_KEY = "spec.json"
STAGES = ("vote", "rank", "train", "eval")
RESERVED_SUMMARY_FIELDS = (
    "attempt",
    "objects",
    "committed_at",
    "stage",
    "round",
    "shard",
    "num_shards",
)
_ATTEMPT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def open_run_store(
    storage_uri: str, namespace: str, run_name: str, endpoint_url: str | None = None
) -> Store:
    """The store rooted at a run's root, `<storage uri>/<namespace>/<run name>/`."""
    return open_store(storage_uri, endpoint_url).child(f"{namespace}/{run_name}")


def stage_prefix(stage: str, round: int | None) -> str:
    """The stage's folder, `rounds/<r>/<stage>/`; round None (base model eval) is `base/eval/`."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: expected one of {', '.join(STAGES)}")
    if round is None:
        if stage != "eval":
            raise ValueError(
                f"stage {stage!r} needs a round (only eval runs once on the base model)"
            )
        return "base/eval/"
    if round < 0:
        raise ValueError(f"round must be >= 0, got {round}")
    return f"rounds/{round}/{stage}/"


def shard_name(shard: int | None, num_shards: int | None) -> str | None:
    """`shard-<i>-of-<n>`, or None for an unsharded stage (both arguments None)."""
    if shard is None and num_shards is None:
        return None
    if shard is None or num_shards is None:
        raise ValueError("shard and num_shards go together: give both or neither")
    if not 0 <= shard < num_shards:
        raise ValueError(
            f"shard {shard} out of range for {num_shards} shards (0..{num_shards - 1})"
        )
    return f"shard-{shard}-of-{num_shards}"


def summary_key(
    stage: str, round: int | None, shard: int | None = None, num_shards: int | None = None
) -> str:
    """The commit object of a stage (or of one shard of it)."""
    name = shard_name(shard, num_shards)
    return stage_prefix(stage, round) + (f"{name}.summary.json" if name else "summary.json")


def write_table_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def read_table(store: Store, key: str) -> pa.Table:
    """Read a Parquet object."""
    data = store.get_bytes(key)
    try:
        return pq.read_table(pa.BufferReader(data))
    except pa.ArrowException as err:
        raise StoreError(f"{store.uri_for(key)} is not a readable Parquet file: {err}") from err


def _read_json(store: Store, key: str) -> dict:
    try:
        doc = json.loads(store.get_bytes(key))
    except json.JSONDecodeError as err:
        raise StoreError(f"{store.uri_for(key)} is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise StoreError(f"{store.uri_for(key)} holds a JSON {type(doc).__name__}, not an object")
    return doc


def read_summary(
    store: Store,
    stage: str,
    round: int | None,
    shard: int | None = None,
    num_shards: int | None = None,
) -> dict | None:
    """The committed summary of a stage (or shard); None when it has not been committed."""
    try:
        return _read_json(store, summary_key(stage, round, shard, num_shards))
    except NotFound:
        return None


def resolve(store: Store, summary: dict, name: str) -> str:
    """The key of the object `name` that a committed summary lists (checked to exist)."""
    objects = summary.get("objects", {})
    if name not in objects:
        raise KeyError(
            f"the summary of attempt {summary.get('attempt')!r} ({summary.get('stage')}, round "
            f"{summary.get('round')}) has no object {name!r}; it has: {sorted(objects) or 'none'}"
        )
    key = objects[name]
    present = store.list(key) if key.endswith("/") else store.exists(key)
    if not present:
        raise NotFound(
            f"summary lists {name!r} at {store.uri_for(key.rstrip('/'))}, but it is gone"
        )
    return key


@dataclass(frozen=True)
class ShardSummaries:
    """The committed summaries of a sharded stage, in shard order, and the missing shards."""

    summaries: list[dict]
    missing: list[int]

    @property
    def complete(self) -> bool:
        return not self.missing

    def require(self) -> list[dict]:
        """All summaries; StoreError naming the missing shards when some are not committed."""
        if self.missing:
            total = len(self.summaries) + len(self.missing)
            raise StoreError(f"shards {self.missing} of {total} have not been committed")
        return self.summaries


def read_shard_summaries(
    store: Store, stage: str, round: int | None, num_shards: int
) -> ShardSummaries:
    """Read every shard summary of a sharded stage (one listing, then one read per shard)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    keys = [summary_key(stage, round, i, num_shards) for i in range(num_shards)]
    present = set(store.list(stage_prefix(stage, round) + "shard-"))
    return ShardSummaries(
        summaries=[_read_json(store, k) for k in keys if k in present],
        missing=[i for i, k in enumerate(keys) if k not in present],
    )


def stage_done(store: Store, stage: str, round: int | None, num_shards: int | None = None) -> bool:
    """True when the stage is committed; a sharded stage needs all `num_shards` shard summaries."""
    if num_shards is None:
        return store.exists(summary_key(stage, round))
    keys = {summary_key(stage, round, i, num_shards) for i in range(num_shards)}
    return keys <= set(store.list(stage_prefix(stage, round) + "shard-"))


class StageAttempt:
    """One attempt of one stage (or shard): writes under its own prefix, then commits."""

    def __init__(
        self,
        store: Store,
        stage: str,
        round: int | None,
        shard: int | None = None,
        num_shards: int | None = None,
        attempt_id: str | None = None,
    ):
        attempt_id = attempt_id or os.environ.get("EVOQUALITY_ATTEMPT_ID") or uuid.uuid4().hex[:12]
        if not _ATTEMPT_ID.fullmatch(attempt_id):
            raise ValueError(
                f"invalid attempt id {attempt_id!r}: 1-63 letters, digits, '_', '.', '-'"
            )
        self.store = store
        self.stage = stage
        self.round = round
        self.shard = shard
        self.num_shards = num_shards
        self.attempt_id = attempt_id
        self.summary_key = summary_key(stage, round, shard, num_shards)
        shard_part = shard_name(shard, num_shards)
        self.prefix = f"{stage_prefix(stage, round)}attempt-{attempt_id}/" + (
            f"{shard_part}/" if shard_part else ""
        )
        self.objects: dict[str, str] = {}
        self.committed = False
        self.won = False

    def key(self, name: str) -> str:
        return self.prefix + name

    def _track(self, name: str, key: str) -> str:
        if self.committed:
            raise RuntimeError(
                f"attempt {self.attempt_id} already committed; cannot write {name!r}"
            )
        self.objects[name] = key
        return key

    def put_bytes(self, name: str, data: bytes) -> str:
        key = self._track(name, self.key(name))
        self.store.put_bytes(key, data)
        return key

    def put_file(self, name: str, path: Path) -> str:
        key = self._track(name, self.key(name))
        self.store.put_file(key, path)
        return key

    def put_dir(self, name: str, directory: Path) -> str:
        """Upload a folder; the summary lists it as the prefix "<attempt prefix><name>/"."""
        key = self._track(name, self.key(name.rstrip("/")) + "/")
        self.store.put_dir(key, directory)
        return key

    def put_table(self, name: str, table: pa.Table) -> str:
        return self.put_bytes(name, write_table_bytes(table))

    def commit(self, summary: dict) -> dict:
        """Create the summary (first committer wins) and return the summary that is committed.

        When another attempt already committed, its summary is returned, nothing is raised and
        `won` stays False.
        """
        if self.committed:
            raise RuntimeError(f"attempt {self.attempt_id} already committed")
        reserved = sorted(set(summary) & set(RESERVED_SUMMARY_FIELDS))
        if reserved:
            raise ValueError(f"summary fields {reserved} are reserved for the commit")
        doc = {
            **summary,
            "stage": self.stage,
            "round": self.round,
            "shard": self.shard,
            "num_shards": self.num_shards,
            "attempt": self.attempt_id,
            "objects": dict(self.objects),
            "committed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        data = json.dumps(doc, sort_keys=True, indent=1).encode()
        self.committed = True
        if self.store.put_if_absent(self.summary_key, data):
            self.won = True
            return doc
        winner = _read_json(self.store, self.summary_key)
        # A retried request whose first try succeeded finds our own summary: that is a win.
        self.won = winner.get("attempt") == self.attempt_id
        return winner
