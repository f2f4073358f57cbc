"""The four stage commands (`evoquality stage <vote|rank|train|eval>`): one entry point each.

`run_stage` is the whole stage contract: open the run's store, pin the spec, run the stage unless
its summary is already committed, and print the summary line last.
"""

from __future__ import annotations

from importlib import import_module

from evoquality.stages.context import StageArgs, StageContext, StageError, emit_summary

STAGE_NAMES = ("vote", "rank", "train", "eval")


def run_stage(args: StageArgs) -> dict:
    """Run one stage (a no-op when already committed) and print its summary line."""
    if args.stage not in STAGE_NAMES:
        raise StageError(f"unknown stage {args.stage!r}: use one of {', '.join(STAGE_NAMES)}")
    if args.stage != "vote" and args.shard is not None:
        raise StageError("only the vote stage is sharded")
    ctx = StageContext(args)
    summary = import_module(f"evoquality.stages.{args.stage}").run(ctx)
    emit_summary(summary)
    return summary


__all__ = ["STAGE_NAMES", "StageArgs", "StageError", "run_stage"]
