"""A stage run as several processes (torchrun ranks): who is who, and the few collectives it needs.

torchrun gives every worker RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE and GROUP_RANK (the
node's rank); `Ranks.from_env()` reads them. Alone (no WORLD_SIZE, or 1) every collective is the
identity and torch is never imported. Under torchrun the first collective joins the default
process group (NCCL on GPUs, gloo on CPU: what accelerate and DeepSpeed would create; both reuse
an existing one) and opens a gloo group of its own with a long timeout: the other ranks may wait
in it while rank 0 uploads a model for many minutes.

* `decide(fn)`: rank 0 runs `fn`; every rank returns its result or raises its exception, so the
  ranks never disagree (on "already done", on the attempt id, on whether the commit happened).
* `on_node_main(fn)`: each node's local rank 0 runs `fn` (a download into the folder the node's
  ranks share), then every rank of the world waits for all of them.
* `node_first(fn)`: the same, then the other ranks run `fn` too (and find what it fetched cached).
* `barrier()`.
* `close()`: destroy the process groups before the interpreter exits (`run_stage` calls it).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")
COORDINATION_TIMEOUT = timedelta(hours=2)


def _number(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {value!r}") from None


def _portable(exc: Exception) -> Exception:
    """The exception itself when it survives pickling, else a RuntimeError naming it."""
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


@dataclass
class Ranks:
    """This process's place among the ranks of a stage, and the stage's collectives."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    _group: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (0 <= self.rank < self.world_size and 0 <= self.local_rank < self.local_world_size):
            raise ValueError(
                f"inconsistent ranks: rank {self.rank} of {self.world_size}, local rank "
                f"{self.local_rank} of {self.local_world_size}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Ranks:
        """The ranks torchrun set; a single process without them."""
        env = os.environ if env is None else env
        world = _number(env, "WORLD_SIZE", 1)
        return cls(
            rank=_number(env, "RANK", 0),
            local_rank=_number(env, "LOCAL_RANK", 0),
            world_size=world,
            local_world_size=_number(env, "LOCAL_WORLD_SIZE", world),
            node_rank=_number(env, "GROUP_RANK", 0),
        )

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_node_main(self) -> bool:
        return self.local_rank == 0

    @property
    def node_ranks(self) -> range:
        """The global ranks of this node (torchrun numbers them node by node)."""
        first = self.rank - self.local_rank
        return range(first, first + self.local_world_size)

    def _coordination_group(self):
        if self._group is None:
            import torch
            import torch.distributed as dist

            if not dist.is_initialized():
                cuda = torch.cuda.is_available()
                if cuda:
                    torch.cuda.set_device(self.local_rank)
                dist.init_process_group("nccl" if cuda else "gloo")
            self._group = dist.new_group(backend="gloo", timeout=COORDINATION_TIMEOUT)
        return self._group

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=self._coordination_group())

    def decide(self, fn: Callable[[], T]) -> T:
        """Rank 0 runs `fn`; every rank returns its result or raises the exception it raised."""
        if not self.distributed:
            return fn()
        import torch.distributed as dist

        outcome: list[Any] = [None]
        error: Exception | None = None
        if self.is_main:
            try:
                outcome[0] = (True, fn())
            except Exception as exc:
                error = exc
                outcome[0] = (False, _portable(exc))
        dist.broadcast_object_list(outcome, src=0, group=self._coordination_group())
        if error is not None:
            raise error
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Destroy every process group (the default one, DeepSpeed's and ours) while the
        interpreter is whole. Left to interpreter exit, gloo's worker threads can still hold work
        whose release needs the interpreter: the rank aborts ("terminate called without an active
        exception", SIGABRT) after the stage committed, and torchrun fails the pod (seen in CI:
        the operator found the committed summary and went on, but the Job had failed). Not a
        collective: a rank that fails may close without waiting for the others."""
        if not self.distributed:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        self._group = None

    def on_node_main(self, fn: Callable[[], Any]) -> None:
        """Each node's local rank 0 runs `fn`; then every rank waits for all nodes."""
        if self.is_node_main:
            fn()
        self.barrier()

    def node_first(self, fn: Callable[[], T]) -> T:
        """`on_node_main(fn)`, then the node's other ranks run `fn`; each returns its own result."""
        results: list[T] = []
        self.on_node_main(lambda: results.append(fn()))
        return results[0] if results else fn()
