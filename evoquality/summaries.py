"""Pure helpers over committed stage summaries, shared by both executors and the report.

Merging vote shard metrics (pair-weighted means, sums of counts) and choosing the best round
(validation SRCC when a validation manifest exists, else the benchmarks' weighted SRCC), and
naming the evaluation protocol behind the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

SUMMED = ("pairs", "votes", "skipped_images")
PAIR_WEIGHTED = ("abstention_rate", "position_bias", "agreement", "tie_rate")


def merge_vote_metrics(shards: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One round's vote metrics from its shards' metrics: sums of counts, pair-weighted means.

    Throughput (`pairs_per_s`) adds up because shards run side by side.
    """
    merged: dict[str, Any] = {key: sum(int(s.get(key) or 0) for s in shards) for key in SUMMED}
    for key in PAIR_WEIGHTED:
        weighted = [(s[key], s.get("pairs") or 0) for s in shards if s.get(key) is not None]
        total = sum(w for _, w in weighted)
        merged[key] = sum(v * w for v, w in weighted) / total if total else None
    rates = [s["pairs_per_s"] for s in shards if s.get("pairs_per_s")]
    merged["pairs_per_s"] = sum(rates) if rates else None
    return merged


def selection_metric(eval_metrics: Mapping[str, Any]) -> tuple[str, float | None]:
    """The metric that picks the best checkpoint: validation SRCC, else weighted test SRCC."""
    for key in ("validation.srcc", "wavg.srcc"):
        if key in eval_metrics:
            value = eval_metrics[key]
            finite = isinstance(value, int | float) and math.isfinite(value)
            return key, float(value) if finite else None
    return "none", None


def best_round(evals: Mapping[int | None, Mapping[str, Any]]) -> tuple[int | None, float | None]:
    """(round, value) of the best evaluation (None = the base model); ties keep the earliest."""
    best: tuple[int | None, float | None] = (None, None)
    for round_index in sorted(evals, key=lambda r: -1 if r is None else r):
        _, value = selection_metric(evals[round_index])
        if value is not None and (best[1] is None or value > best[1]):
            best = (round_index, value)
    return best


def should_stop_early(evals: Mapping[int | None, Mapping[str, Any]], round_index: int) -> bool:
    """Early stopping: round r's validation SRCC fell below the best before it (base included)."""
    key, value = selection_metric(evals.get(round_index, {}))
    if key != "validation.srcc" or value is None:
        return False
    earlier = {r: m for r, m in evals.items() if r is None or r < round_index}
    _, best = best_round(earlier)
    return best is not None and value < best


def eval_protocols(evals: dict) -> str:
    """The evaluation protocol(s) behind a run's eval summaries, e.g. for a table's caption
    ("unknown" for summaries written before the protocol was recorded)."""
    found = sorted({str(m.get("protocol", "unknown")) for m in evals.values()})
    return "; ".join(found) if found else "no evaluation yet"
