"""How many requests the vote and eval stages put in one engine call (pure logic).

A shard's requests go to the engine in few, large calls: vLLM batches continuously inside a call
but waits for the slowest completion at its end, so fewer calls keep more sequences in flight.
Two bounds keep calls finite:

* memory: vLLM preprocesses every request of a call before scheduling any, holding its
  ``pixel_values`` (float32, 3 channels x 2 temporal copies = `BYTES_PER_PIXEL` bytes per image
  pixel) until the request runs; a call's images stay within `call_memory_bytes`
  (``EVOQUALITY_CALL_MEMORY_MB``, default 2 GiB);
* progress: a call takes at most ``max(MIN_CALL, total / PROGRESS_STEPS)`` units, so a shard of
  more than `MIN_CALL` units reports progress at least every tenth of the shard (each extra call
  costs one tail, the wait for its slowest completion; `MIN_CALL` pairs x 2 orders x K/2 samples
  still fill a GPU's KV cache).

An explicit ``batchSize`` in the spec replaces both bounds (a fixed number of units per call).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping

BYTES_PER_PIXEL = 24
DEFAULT_CALL_MEMORY_MB = 8192
PROGRESS_STEPS = 10
MIN_CALL = 256


def call_memory_bytes(env: Mapping[str, str] = os.environ) -> int:
    return int(env.get("EVOQUALITY_CALL_MEMORY_MB") or DEFAULT_CALL_MEMORY_MB) << 20


def units_per_call(total: int, pixels_per_unit: int, fixed: int | None, memory_bytes: int) -> int:
    """Units (ordered pair sets or images) per engine call for ``total`` units of a shard.

    ``pixels_per_unit``: image pixels that one unit sends (0 for engines without pixels).
    """
    if fixed is not None:
        return max(1, fixed)
    by_memory = memory_bytes // max(1, pixels_per_unit * BYTES_PER_PIXEL)
    by_progress = max(MIN_CALL, math.ceil(total / PROGRESS_STEPS))
    return max(1, min(total, by_memory, by_progress))


def batches(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``size`` covering ``range(total)``."""
    for lo in range(0, total, size):
        yield slice(lo, min(total, lo + size))
