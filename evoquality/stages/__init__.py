"""The four stage commands (`evoquality stage <vote|rank|train|eval>`): one entry point each.

`run_stage` is the whole stage contract: open the run's store, pin the spec, run the stage unless
its summary is already committed, close the ranks' process groups, and print the summary line
last.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import import_module

from evoquality import artifacts
from evoquality.stages.context import StageArgs, StageContext, StageError, emit_summary

STAGE_NAMES = ("vote", "rank", "train", "eval")


def run_stage(args: StageArgs) -> dict:
    """Run one stage (a no-op when already committed) and print its summary line."""
    if args.stage not in STAGE_NAMES:
        raise StageError(f"unknown stage {args.stage!r}: use one of {', '.join(STAGE_NAMES)}")
    if args.round is None and args.stage != "eval":
        raise StageError(f"{args.stage} needs a round number (only eval runs on `base`)")
    if args.stage == "vote":  # always sharded: an unsharded call is shard 0 of 1
        args = replace(args, shard=args.shard or 0, num_shards=args.num_shards or 1)
    elif args.shard is not None or args.num_shards is not None:
        raise StageError("only the vote stage is sharded")
    ctx = StageContext(args)
    try:
        summary = ctx.ranks.decide(  # under several ranks, rank 0's answer for all of them
            lambda: artifacts.read_summary(
                ctx.store, args.stage, args.round, args.shard, args.num_shards
            )
        )
        if summary is None:
            summary = import_module(f"evoquality.stages.{args.stage}").run(ctx)
    finally:
        ctx.ranks.close()
    emit_summary(summary)
    return summary


__all__ = ["STAGE_NAMES", "StageArgs", "StageError", "run_stage"]
