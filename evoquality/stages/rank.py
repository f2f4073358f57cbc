"""The rank stage: merge all vote shards, make pseudo-labels and global Bradley-Terry scores.

Labels follow `ranking.labels` (hard majority: the paper; soft vote fraction; or Bradley-Terry);
global scores are always fitted on all individual votes (adaptive pairing and the report use
them). Writes `labels.parquet` (kept pairs only) and `scores.parquet`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from evoquality import artifacts
from evoquality.ranking import fit_bradley_terry, pseudo_labels, votes_to_comparisons
from evoquality.stages.context import StageContext, StageError
from evoquality.voting import agreement

LABELS_SCHEMA = pa.schema(
    [
        ("image_a", pa.string()),
        ("image_b", pa.string()),
        ("p_star", pa.float64()),
        ("confidence", pa.float64()),
        ("weight", pa.float64()),
    ]
)
AGREEMENT_BINS = (0.5, 0.625, 0.75, 0.875, 1.0)


def merged_votes(ctx: StageContext, round_index: int) -> pa.Table:
    """All shards' votes in pair order; StageError naming missing shards."""
    shards = artifacts.read_shard_summaries(ctx.store, "vote", round_index, ctx.spec.voting.shards)
    if not shards.complete:
        raise StageError(
            f"vote shards {shards.missing} of round {round_index} are not committed; "
            "run them before rank"
        )
    tables = [
        artifacts.read_table(ctx.store, artifacts.resolve(ctx.store, s, "votes.parquet"))
        for s in shards.summaries
    ]
    columns = ["pair_id", "image_a", "image_b", "votes_a", "votes_b", "abstain"]
    return pa.concat_tables([t.select(columns) for t in tables]).sort_by("pair_id")


def run(ctx: StageContext) -> dict:
    round_index = ctx.args.round
    votes = merged_votes(ctx, round_index)
    if votes.num_rows == 0:
        raise StageError(f"round {round_index} has no votes to rank")
    image_a = votes["image_a"].to_numpy(zero_copy_only=False)
    image_b = votes["image_b"].to_numpy(zero_copy_only=False)
    votes_a = votes["votes_a"].to_numpy().astype(np.int64)
    votes_b = votes["votes_b"].to_numpy().astype(np.int64)
    keys, index = np.unique(np.concatenate([image_a, image_b]), return_inverse=True)
    pairs = index.reshape(2, -1).T

    winners, losers, counts = votes_to_comparisons(pairs, votes_a, votes_b)
    scores = fit_bradley_terry(len(keys), winners, losers, counts)
    ranking = ctx.spec.ranking
    labels = pseudo_labels(
        votes_a,
        votes_b,
        mode=ranking.labels,
        min_confidence=ranking.min_confidence,
        confidence_weighting=ranking.confidence_weighting,
        bt_scores=scores,
        pairs=pairs,
    )
    keep = labels.keep
    label_table = pa.table(
        {
            "image_a": image_a[keep],
            "image_b": image_b[keep],
            "p_star": labels.p_star[keep],
            "confidence": labels.confidence[keep],
            "weight": labels.weight[keep],
        },
        schema=LABELS_SCHEMA,
    )
    score_table = pa.table({"image": keys, "score": scores})

    attempt = artifacts.StageAttempt(ctx.store, "rank", round_index)
    attempt.put_table("labels.parquet", label_table)
    attempt.put_table("scores.parquet", score_table)
    agree = agreement(votes_a, votes_b)
    decided = votes_a + votes_b
    total = decided + votes["abstain"].to_numpy()
    hist, _ = np.histogram(agree[np.isfinite(agree)], bins=AGREEMENT_BINS)
    metrics = {
        "pairs": votes.num_rows,
        "images": len(keys),
        "labels": int(keep.sum()),
        "dropped_low_confidence": int((~keep).sum()),
        "tie_rate": float(np.mean((votes_a == votes_b) & (decided > 0))),
        "agreement": float(np.nanmean(agree)) if np.isfinite(agree).any() else None,
        "abstention_rate": float(1 - decided.sum() / total.sum()) if total.sum() else 0.0,
        **{
            f"agreement_hist_{lo:.3f}": int(n)
            for lo, n in zip(AGREEMENT_BINS[:-1], hist, strict=True)
        },
        "label_mode": ranking.labels,
    }
    return attempt.commit({"metrics": metrics})
