"""Pseudo-label quality at equal cost: the paper's design vs ours, on simulated judges.

paper = random pairs, K votes each, hard majority labels, global scores = Bradley-Terry on the
        majority outcomes;
ours  = balanced pairs, K votes each, Bradley-Terry on ALL individual votes, labels either soft
        (vote share) or from the global scores (sigmoid(s_a - s_b)).
Judges: single-vote accuracy 65-85% with independent errors, plus a fixed per-pair error (a share
of pairs judged consistently the wrong way) and a position bias (votes always balanced in order).

Label metrics on the trained pairs, against the true direction (q_a > q_b): accuracy (p* = 0.5
counts half), Brier score and expected calibration error (10 bins). Global: SRCC of the scores.

Part 1 holds the number of model calls (votes) fixed. Part 2 holds a compute cost fixed and
trades votes per pair against distinct pairs under two cost models of vLLM with ``n = K`` and
prefix caching: the K votes of one ordered pair share one prefill, so a pair costs
``orders * prefill + K * decode``. Without reasoning the decode is a few tokens (extra votes are
cheap); with reasoning it dominates (extra votes cost as much as new pairs).

    python benchmarks/labels.py [--quick]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from evoquality.pairs import plan_pairs
from evoquality.ranking import fit_bradley_terry, pseudo_labels, votes_to_comparisons
from evoquality.simulation import SimulatedJudge, simulate_choices, temperature_for_accuracy
from evoquality.voting import tally

N_IMAGES = 1000
PREFILL_TOKENS = 600  # two images of ~256 visual tokens plus the question
DECODE_COST = 4.0  # cost of one decoded token in prefilled tokens (batched decode is slower)
DECODE_TOKENS = {"no reasoning": 8, "reasoning": 300}


@dataclass(frozen=True)
class Judge:
    name: str
    accuracy: float
    pair_error: float = 0.0
    position_bias: float = 0.0


JUDGES = (
    Judge("65% independent", 0.65),
    Judge("75% independent", 0.75),
    Judge("85% independent", 0.85),
    Judge("75% + 10% fixed pair errors", 0.75, pair_error=0.10),
    Judge("75% + 0.2 position bias", 0.75, position_bias=0.2),
)


def label_quality(p_star: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """(accuracy, Brier, ECE) of P(a better) labels against the true direction."""
    accuracy = float(np.mean(np.where(p_star == 0.5, 0.5, (p_star > 0.5) == truth)))
    brier = float(np.mean((p_star - truth) ** 2))
    bins = np.minimum((p_star * 10).astype(int), 9)
    gaps = [abs(p_star[bins == b].mean() - truth[bins == b].mean()) for b in np.unique(bins)]
    weights = np.bincount(bins)[np.unique(bins)] / len(p_star)
    return accuracy, brier, float(np.dot(weights, gaps))


def run(judge: Judge, design: str, n_pairs: int, k: int, seed: int) -> dict[str, tuple]:
    """Label metrics per label kind and the global SRCC for one simulated round."""
    quality = np.random.default_rng(seed).normal(size=N_IMAGES)
    simulated = SimulatedJudge(
        temperature=temperature_for_accuracy(quality, judge.accuracy),
        pair_error=judge.pair_error,
        position_bias=judge.position_bias,
        seed=seed,
    )
    sampler = "random" if design == "paper" else "balanced"
    pairs = plan_pairs(N_IMAGES, n_pairs, sampler, seed)
    counts = tally(*simulate_choices(simulated, quality, pairs, k))
    a, b = counts.votes_a, counts.votes_b
    truth = (quality[pairs[:, 0]] > quality[pairs[:, 1]]).astype(float)
    if design == "paper":
        outcomes = votes_to_comparisons(pairs, (a > b).astype(int), (b > a).astype(int))
        scores = fit_bradley_terry(N_IMAGES, *outcomes)
        labels = {"hard": pseudo_labels(a, b, "hard").p_star}
    else:
        scores = fit_bradley_terry(N_IMAGES, *votes_to_comparisons(pairs, a, b))
        labels = {
            "soft": pseudo_labels(a, b, "soft").p_star,
            "bt": pseudo_labels(a, b, "bradley-terry", bt_scores=scores, pairs=pairs).p_star,
        }
    srcc = float(spearmanr(scores, quality).statistic)
    return {kind: (*label_quality(p, truth), srcc) for kind, p in labels.items()}


def averaged(
    judge: Judge, design: str, n_pairs: int, k: int, seeds: range
) -> dict[str, np.ndarray]:
    runs = [run(judge, design, n_pairs, k, seed) for seed in seeds]
    return {kind: np.mean([r[kind] for r in runs], axis=0) for kind in runs[0]}


def row(label: str, metrics: dict[str, np.ndarray]) -> str:
    cells = [
        f"{kind} acc {m[0]:.3f} brier {m[1]:.3f} ece {m[2]:.3f}" for kind, m in metrics.items()
    ]
    srcc = next(iter(metrics.values()))[3]
    return f"  {label:22s} SRCC {srcc:.3f} | " + " | ".join(cells)


def equal_calls(votes_per_image: int, ks: tuple[int, ...], seeds: range) -> None:
    budget = votes_per_image * N_IMAGES
    print(f"== Part 1: equal model calls ({budget} votes, {N_IMAGES} images, {len(seeds)} seeds)")
    for judge in JUDGES:
        print(judge.name)
        for k in ks:
            for design in ("paper", "ours"):
                metrics = averaged(judge, design, budget // k, k, seeds)
                print(row(f"{design} K={k} P={budget // k}", metrics))


def pair_cost(k: int, decode_tokens: int) -> float:
    """Cost of one pair with K votes: one prefill per image order, K short or long decodes."""
    return min(k, 2) * PREFILL_TOKENS + k * decode_tokens * DECODE_COST


def equal_compute(pairs_per_image_at_k8: int, ks: tuple[int, ...], seeds: range) -> None:
    judge = JUDGES[1]
    print(
        f"== Part 2: equal compute ({judge.name}; budget = {pairs_per_image_at_k8}N pairs at K=8;"
    )
    print(f"   pair cost = orders * {PREFILL_TOKENS} + K * decode tokens * {DECODE_COST})")
    for model, decode_tokens in DECODE_TOKENS.items():
        budget = pairs_per_image_at_k8 * N_IMAGES * pair_cost(8, decode_tokens)
        print(f"{model} ({decode_tokens} decoded tokens per vote)")
        for k in ks:
            n_pairs = int(budget // pair_cost(k, decode_tokens))
            for design in ("paper", "ours"):
                metrics = averaged(judge, design, n_pairs, k, seeds)
                print(row(f"{design} K={k} P={n_pairs}", metrics))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds and vote counts")
    args = parser.parse_args()
    start = time.perf_counter()
    seeds = range(2 if args.quick else 4)
    ks = (1, 4, 16) if args.quick else (1, 2, 4, 8, 16, 32)
    equal_calls(16, ks, seeds)
    equal_compute(2, ks, seeds)
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
