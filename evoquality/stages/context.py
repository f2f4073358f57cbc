"""What every stage command shares: arguments, the pinned spec, the policy model, the summary line.

A stage reads the spec (from `--spec`, which the operator mounts, or from the store), pins it on
first use (`spec.json` created with a conditional put) and refuses to run when a later spec's hash
differs. It prints its summary (scalars only, at most 2 KB) as the last stdout line and to
`/dev/termination-log` when that exists, also when the stage was already done.

A stage run as several ranks (the train stage under torchrun) agrees through `ctx.ranks`: rank 0
decides whether the stage is done and draws the attempt id (`attempt`), and each node's local rank 0
fetches the policy model before the node's other ranks look for it in the cache they share.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evoquality import artifacts
from evoquality.spec import (
    EvoQualityRunSpec,
    SpecError,
    parse_run,
    parse_spec,
    spec_hash,
    spec_to_dict,
)
from evoquality.stages.ranks import Ranks
from evoquality.storage import Store, open_store

# the pod's terminationMessagePath; the operator also renders it as this variable
TERMINATION_LOG = Path(os.environ.get("EVOQUALITY_TERMINATION_LOG", "/dev/termination-log"))
# More unreadable images than this share fails a stage; fewer are skipped and counted.
MAX_UNREADABLE_SHARE = 0.05
SUMMARY_LIMIT = 2048


class StageError(RuntimeError):
    """A stage cannot run: bad input, missing upstream artifacts, a spec mismatch."""


def check_unreadable(failures: list[str], total: int) -> None:
    """Skip a few unreadable images (counted in the summary); fail when too many are."""
    if failures and len(failures) > MAX_UNREADABLE_SHARE * max(total, 1):
        raise StageError(
            f"{len(failures)} of {total} images could not be read, e.g.:\n  "
            + "\n  ".join(failures[:5])
        )
    if failures:
        print(f"warning: skipping {len(failures)} unreadable images", file=sys.stderr)


@dataclass(frozen=True)
class StageArgs:
    stage: str
    run_uri: str
    round: int | None
    shard: int | None = None
    num_shards: int | None = None
    spec_file: Path | None = None


def parse_round(value: str) -> int | None:
    """`--round` takes a round number or `base` (the base model's evaluation)."""
    if value == "base":
        return None
    try:
        number = int(value)
    except ValueError:
        raise StageError(f"--round must be a number or 'base', got {value!r}") from None
    if number < 0:
        raise StageError(f"--round must be >= 0, got {number}")
    return number


def cache_dir() -> Path:
    """Model and dataset cache: $EVOQUALITY_CACHE, else ~/.cache/evoquality."""
    path = Path(os.environ.get("EVOQUALITY_CACHE", Path.home() / ".cache" / "evoquality"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_spec_file(path: Path) -> EvoQualityRunSpec:
    """A spec file: a bare spec (what the operator mounts) or a whole run manifest."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StageError(f"{path}: cannot read the spec: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise StageError(f"{path}: not valid YAML/JSON: {exc}") from None
    try:
        if isinstance(document, dict) and "spec" in document and "kind" in document:
            return parse_run(document).spec
        return parse_spec(document)
    except SpecError as exc:
        raise StageError(f"{path}: invalid spec:\n{exc}") from None


def pin_spec(store: Store, spec: EvoQualityRunSpec | None) -> EvoQualityRunSpec:
    """Store the spec snapshot on first use; refuse a spec whose hash differs from it."""
    if spec is not None:
        snapshot = {"hash": spec_hash(spec), "spec": spec_to_dict(spec)}
        if store.put_if_absent(artifacts.SPEC_KEY, json.dumps(snapshot, indent=2).encode()):
            return spec
    try:
        stored = json.loads(store.get_bytes(artifacts.SPEC_KEY))
    except FileNotFoundError:
        raise StageError(
            f"no spec at {store.uri_for(artifacts.SPEC_KEY)}: pass --spec for the first stage"
        ) from None
    pinned = parse_spec(stored["spec"])
    if spec is not None and spec_hash(spec) != stored["hash"]:
        raise StageError(
            "the spec differs from the one this run started with "
            f"({store.uri_for(artifacts.SPEC_KEY)}); start a new run (a new name) to change it"
        )
    return pinned


class StageContext:
    """One stage invocation: its store, spec, round and shard."""

    def __init__(self, args: StageArgs):
        self.args = args
        file_spec = read_spec_file(args.spec_file) if args.spec_file else None
        endpoint = file_spec.storage.endpoint if file_spec else None
        self.store = open_store(args.run_uri, endpoint)
        self.spec = pin_spec(self.store, file_spec)
        self.round = args.round
        self.cache = cache_dir()
        self.ranks = Ranks.from_env()

    @property
    def run_uri(self) -> str:
        return self.args.run_uri.rstrip("/")

    def uri(self, key: str) -> str:
        return self.store.uri_for(key)

    def summary(self, stage: str | None = None, round_index: int | None = None) -> dict | None:
        stage = stage or self.args.stage
        return artifacts.read_summary(self.store, stage, round_index)

    def require_summary(self, stage: str, round_index: int) -> dict:
        summary = artifacts.read_summary(self.store, stage, round_index)
        if summary is None:
            raise StageError(
                f"stage {stage} of round {round_index} has not been committed yet "
                f"({self.uri(artifacts.summary_key(stage, round_index))} is missing)"
            )
        return summary

    def attempt(self, stage: str, round_index: int | None) -> artifacts.StageAttempt:
        """A new attempt of an unsharded stage, with one id on every rank (rank 0's)."""
        attempt_id = self.ranks.decide(
            lambda: artifacts.StageAttempt(self.store, stage, round_index).attempt_id
        )
        return artifacts.StageAttempt(self.store, stage, round_index, attempt_id=attempt_id)

    def policy_model(self, round_index: int | None) -> str:
        """P_r (see `_resolve_policy`); under several ranks each node's local rank 0 fetches it
        first and the node's other ranks find it in the cache."""
        return self.ranks.node_first(lambda: self._resolve_policy(round_index))

    def _resolve_policy(self, round_index: int | None) -> str:
        """The base model at round 0 (and for `base`), else round r-1's trained checkpoint."""
        from evoquality.models import resolve_model

        if round_index is None or round_index == 0:
            return resolve_model(self.spec.model.base, self.cache, self.spec.model.revision)
        train = self.require_summary("train", round_index - 1)
        key = artifacts.resolve(self.store, train, "checkpoint")
        return resolve_model(self.uri(key), self.cache)


def scalar_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The scalar part of a committed summary that fits a termination message (<= 2 KB)."""
    keep = {k: summary.get(k) for k in ("stage", "round", "shard", "num_shards", "attempt")}
    keep["round"] = "base" if keep["round"] is None else keep["round"]
    metrics = {
        k: v for k, v in summary.get("metrics", {}).items() if isinstance(v, int | float | str)
    }
    keep["metrics"] = metrics
    text = json.dumps(keep, separators=(",", ":"))
    while len(text.encode()) > SUMMARY_LIMIT and metrics:
        metrics.pop(next(reversed(metrics)))
        text = json.dumps(keep, separators=(",", ":"))
    return keep


def emit_summary(summary: dict[str, Any]) -> str:
    """Print the summary line last on stdout and to the termination log; return the line."""
    line = json.dumps(scalar_summary(summary), separators=(",", ":"))
    sys.stdout.flush()
    # one write(2) with its newline: the ranks of a train stage share one stdout pipe, and print()
    # writes the text and the newline separately when stdout is unbuffered (PYTHONUNBUFFERED),
    # so two ranks' lines could interleave
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
    if TERMINATION_LOG.exists():
        with contextlib.suppress(OSError):
            TERMINATION_LOG.write_text(line)
    return line
