"""`Ranks` collectives with 2 real ranks under torchrun (gloo on CPU), no training: every rank gets
rank 0's decision, and rank 0's error, so the other ranks fail when rank 0 does; `close` leaves no
process group to the interpreter's exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import os

    from evoquality.stages.context import StageError
    from evoquality.stages.ranks import Ranks


    def say(line):
        # one write(2) per line: the ranks share torchrun's stdout pipe, and print() may write the
        # text and its newline separately (PYTHONUNBUFFERED), interleaving the ranks' lines
        os.write(1, (line + "\\n").encode())


    ranks = Ranks.from_env()
    assert ranks.distributed and ranks.world_size == 2
    say(f"rank {ranks.rank} decided {ranks.decide(lambda: f'id-{ranks.rank}')}")
    say(f"rank {ranks.rank} resolved {ranks.node_first(lambda: ranks.rank)}")

    def commit():
        raise StageError("rank 0 could not commit")

    try:
        ranks.decide(commit)
    except StageError as exc:
        say(f"rank {ranks.rank} failed: {exc}")
        raise SystemExit(3)
    finally:
        import torch.distributed as dist

        was = dist.is_initialized()
        ranks.close()
        say(f"rank {ranks.rank} closed: initialized {was} -> {dist.is_initialized()}")
    """
)
DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.mark.slow
def test_every_rank_follows_rank_0(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["PYTHONPATH"] = str(Path(__file__).parents[2])
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    proc = subprocess.run(
        [*launcher, "--nproc-per-node", "2", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = set(proc.stdout.splitlines())
    assert {"rank 0 decided id-0", "rank 1 decided id-0"} <= lines, proc.stderr[-3000:]
    assert {"rank 0 resolved 0", "rank 1 resolved 1"} <= lines
    assert {"rank 0 failed: rank 0 could not commit", "rank 1 failed: rank 0 could not commit"} <= (
        lines
    ), proc.stderr[-3000:]
    # `close` (what `run_stage` does last) destroyed the process groups before exit
    assert {f"rank {r} closed: initialized True -> False" for r in (0, 1)} <= lines
    assert proc.returncode != 0
