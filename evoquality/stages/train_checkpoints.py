"""Step checkpoints of the train stage in the store: every rank's files, counted once complete.

A trainer checkpoint is spread over ranks and nodes. Rank 0 writes the model, optimizer,
scheduler and trainer state (under DeepSpeed also `global_step<N>/mp_rank_00_model_states.pt`,
which every rank reads back); every rank writes `rng_state_<rank>.pth` and, under DeepSpeed, its
own ZeRO partitions (`global_step<N>/*zero_pp_rank_<rank>_*`), each into its node's output folder.

`publish` (every rank calls it once the trainer saved): barrier (every rank's files are on its
node's disk); each node's local rank 0 uploads its node's folder to
`<attempt>/checkpoints/checkpoint-<N>/` (per-rank files carry the rank, so nodes never collide);
barrier (every node's files are in the store); rank 0 writes `checkpoint-complete.json` (step,
world size, nodes). `latest` takes only checkpoints with that marker, so a checkpoint whose upload
was killed half-way is never read, and only those saved by the same world size: DeepSpeed refuses
ZeRO partitions written by another number of ranks, and the per-rank RNG states and the data
position would not line up. A checkpoint of another world size is skipped with a warning and the
attempt trains from P_r. `download` fetches what one node needs: the shared files and its own
ranks' files.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from evoquality import artifacts
from evoquality.stages.ranks import Ranks
from evoquality.storage import Store

MARKER = "checkpoint-complete.json"
_MARKER_KEY = re.compile(r"attempt-[^/]+/checkpoints/checkpoint-(\d+)/" + re.escape(MARKER) + "$")
_RANK_FILE = re.compile(r"(?:^|_)(?:rng_state|zero_pp_rank)_(\d+)(?:\D|$)")


@dataclass(frozen=True)
class StoredCheckpoint:
    prefix: str  # ".../attempt-<id>/checkpoints/checkpoint-<step>/"
    step: int
    world_size: int

    @property
    def name(self) -> str:
        return f"checkpoint-{self.step}"


def complete_checkpoints(keys: Iterable[str]) -> list[tuple[int, str]]:
    """(step, prefix) of every checkpoint that has its completion marker, newest first."""
    found = []
    for key in keys:
        match = _MARKER_KEY.search(key)
        if match:
            found.append((int(match.group(1)), key[: -len(MARKER)]))
    return sorted(found, reverse=True)


def file_rank(name: str) -> int | None:
    """The rank a checkpoint file belongs to (`rng_state_3.pth`, `zero_pp_rank_3_...`), or None
    for a file every rank may read."""
    match = _RANK_FILE.search(name.rsplit("/", 1)[-1])
    return None if match is None else int(match.group(1))


def needed_by(name: str, node_ranks: range) -> bool:
    """Whether a node whose ranks are `node_ranks` needs this checkpoint file to resume."""
    rank = file_rank(name)
    return rank is None or rank in node_ranks


def checkpoint_prefix(attempt: artifacts.StageAttempt, checkpoint: Path) -> str:
    return attempt.key(f"checkpoints/{checkpoint.name}/")


def latest(store: Store, round_index: int, world_size: int) -> StoredCheckpoint | None:
    """The newest complete checkpoint of any attempt of the round saved by `world_size` ranks."""
    keys = store.list(artifacts.stage_prefix("train", round_index))
    for step, prefix in complete_checkpoints(keys):
        marker = json.loads(store.get_bytes(prefix + MARKER))
        saved_by = marker.get("world_size")
        if saved_by == world_size:
            print(f"resuming from {store.uri_for(prefix)}", file=sys.stderr)
            return StoredCheckpoint(prefix, step, world_size)
        print(
            f"warning: skipping {store.uri_for(prefix)}: saved by {saved_by} ranks, this "
            f"attempt has {world_size} (a checkpoint resumes only with the same world size)",
            file=sys.stderr,
        )
    return None


def publish(ranks: Ranks, attempt: artifacts.StageAttempt, checkpoint: Path) -> None:
    """Every rank calls this after the trainer saved `checkpoint` (see the module docstring)."""
    prefix = checkpoint_prefix(attempt, checkpoint)
    ranks.barrier()
    if ranks.is_node_main:
        attempt.store.put_dir(prefix, checkpoint)
    ranks.barrier()
    if ranks.is_main:
        step = int(checkpoint.name.rsplit("-", 1)[-1])
        marker = {
            "step": step,
            "world_size": ranks.world_size,
            "nodes": ranks.world_size // ranks.local_world_size,
            "attempt": attempt.attempt_id,
        }
        attempt.store.put_bytes(prefix + MARKER, json.dumps(marker).encode())
        print(f"{checkpoint.name} complete: {attempt.store.uri_for(prefix)}", file=sys.stderr)
    elif ranks.is_node_main and ranks.node_rank != 0:
        # the trainer rotates old checkpoints on rank 0's node only; this node's copy is stored
        shutil.rmtree(checkpoint, ignore_errors=True)


def download(store: Store, checkpoint: StoredCheckpoint, directory: Path, ranks: Ranks) -> Path:
    """Fetch the files this node needs into `directory/checkpoint-<step>`; return that folder."""
    target = Path(directory) / checkpoint.name
    for key in store.list(checkpoint.prefix):
        name = key[len(checkpoint.prefix) :]
        if name != MARKER and needed_by(name, ranks.node_ranks):
            store.get_file(key, target / name)
    return target
