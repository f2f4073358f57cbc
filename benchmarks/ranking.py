"""Bradley-Terry fit: ours (sparse Newton-CG) vs choix.mm_pairwise on the same votes, side by side.

Fairness: choix computes the plain maximum-likelihood estimate, which exists only when the
comparison graph is strongly connected (no unbeaten group of items). So n of the votes form one
directed cycle through all images in random order (each image wins and loses at least once) and
the rest are simulated; ours runs with a negligible prior (1e-9), so both target the same
estimate; both are centred before comparing. Then ours alone at 1e6 votes over 1e5 images,
in three designs.

    python benchmarks/ranking.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import choix
import numpy as np

from evoquality.pairs import plan_pairs
from evoquality.ranking import fit_bradley_terry, votes_to_comparisons
from evoquality.simulation import SimulatedJudge, simulate_choices, temperature_for_accuracy
from evoquality.voting import tally


def simulate(n: int, n_pairs: int, k: int, sampler: str, accuracy: float, seed: int):
    """(winners, losers, counts) of K votes on each of n_pairs pairs of n images."""
    quality = np.random.default_rng(seed).normal(size=n)
    judge = SimulatedJudge(temperature=temperature_for_accuracy(quality, accuracy), seed=seed)
    pairs = plan_pairs(n, n_pairs, sampler, seed)
    counts = tally(*simulate_choices(judge, quality, pairs, k))
    return votes_to_comparisons(pairs, counts.votes_a, counts.votes_b)


def best_time(fn, repeats: int) -> tuple[float, np.ndarray]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def versus_choix(n: int, n_votes: int) -> None:
    winners, losers, counts = simulate(n, n_votes - n, 1, "random", 0.65, 0)
    cycle = np.random.default_rng(1).permutation(n)
    winners = np.concatenate((winners, cycle))
    losers = np.concatenate((losers, np.roll(cycle, 1)))
    counts = np.concatenate((counts, np.ones(n, dtype=counts.dtype)))
    data = list(zip(winners.tolist(), losers.tolist(), strict=True))  # counts are all 1 (K = 1)
    start = time.perf_counter()
    theirs = choix.mm_pairwise(n, data)
    choix_s = time.perf_counter() - start
    ours_s, ours = best_time(lambda: fit_bradley_terry(n, winners, losers, counts, prior=1e-9), 3)
    diff = np.max(np.abs(ours - (theirs - theirs.mean())))
    print(f"{n} images, {n_votes} votes (1 per random pair, 65% judge, + a cycle of {n}):")
    print(f"  choix.mm_pairwise {choix_s:8.3f} s")
    print(f"  ours              {ours_s:8.3f} s  -> {choix_s / ours_s:.0f}x faster")
    print(f"  max |difference| of centred log-strengths: {diff:.2e}")


def ours_at_scale(n: int, n_votes: int) -> None:
    print(f"ours alone, {n} images, {n_votes} votes (75% judge, default prior 1e-3, best of 3):")
    for sampler, k in (("random", 1), ("balanced", 5), ("random", 10)):
        votes = simulate(n, n_votes // k, k, sampler, 0.75, 0)
        seconds, _ = best_time(lambda v=votes: fit_bradley_terry(n, *v), 3)
        print(f"  {sampler:8s} pairs x {k:2d} votes ({n_votes // k:7d} pairs): {seconds:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller sizes")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    versus_choix(10_000 // scale, 100_000 // scale)
    ours_at_scale(100_000 // scale, 1_000_000 // scale)


if __name__ == "__main__":
    main()
