"""Progress of long stage work: a rich bar in a terminal, JSON lines for the embedded runner.

When `EVOQUALITY_PROGRESS=jsonl` (set by `evoquality run`), a stage writes
`@progress {"task": ..., "done": n, "total": m}` lines to stderr, and the runner draws one bar per
stage and shard from them; otherwise the stage draws its own rich bar on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

PREFIX = "@progress "
_MIN_INTERVAL_S = 0.5


class Reporter:
    """Counts finished units of one task and reports them, throttled."""

    def __init__(self, task: str, total: int, bar: Progress | None):
        self.task, self.total, self.done = task, total, 0
        self._bar = bar
        self._bar_id = bar.add_task(task, total=total) if bar else None
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._bar_id, completed=self.done)
            return
        now = time.monotonic()
        if now - self._last >= _MIN_INTERVAL_S or self.done >= self.total:
            self._last = now
            payload = {"task": self.task, "done": self.done, "total": self.total}
            print(PREFIX + json.dumps(payload), file=sys.stderr, flush=True)


@contextmanager
def progress(task: str, total: int) -> Iterator[Reporter]:
    """Report progress of `total` units of `task` for the duration of the block."""
    if os.environ.get("EVOQUALITY_PROGRESS") == "jsonl":
        yield Reporter(task, total, None)
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    with bar:
        yield Reporter(task, total, bar)


def parse_line(line: str) -> dict | None:
    """A progress event from a stage's stderr line, or None for any other line."""
    if not line.startswith(PREFIX):
        return None
    try:
        event = json.loads(line[len(PREFIX) :])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and {"task", "done", "total"} <= set(event) else None
