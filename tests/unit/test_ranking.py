"""Pseudo-labels, the Bradley-Terry fit (exactness, invariances) and statistical claims on designs.

The statistical tests simulate a judge of 70% single-vote accuracy on a few hundred images over
several seeds and compare design choices on the SRCC of the recovered global ranking; each claim
is asserted on paired per-seed differences with a margin of two standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from scipy.stats import spearmanr

from evoquality.pairs import plan_pairs
from evoquality.ranking import (
    LABEL_MODES,
    fit_bradley_terry,
    pseudo_labels,
    votes_to_comparisons,
)
from evoquality.simulation import SimulatedJudge, simulate_choices, temperature_for_accuracy
from evoquality.voting import tally

# ---------------------------------------------------------------- labels


def test_hard_labels_follow_the_majority_with_ties_at_half():
    labels = pseudo_labels(np.array([5, 1, 2, 0]), np.array([3, 4, 2, 0]))
    np.testing.assert_array_equal(labels.p_star, [1.0, 0.0, 0.5, 0.5])
    np.testing.assert_allclose(labels.confidence, [0.25, 0.6, 0.0, 0.0])
    np.testing.assert_array_equal(labels.keep, [True, True, True, False])
    np.testing.assert_array_equal(labels.weight, 1.0)


def test_soft_labels_threshold_and_confidence_weights():
    labels = pseudo_labels(
        np.array([6, 1, 3]),
        np.array([2, 4, 3]),
        mode="soft",
        min_confidence=0.3,
        confidence_weighting=True,
    )
    np.testing.assert_allclose(labels.p_star, [0.75, 0.2, 0.5])
    np.testing.assert_allclose(labels.weight, [0.5, 0.6, 0.0])
    np.testing.assert_array_equal(labels.keep, [True, True, False])


def test_bradley_terry_labels_come_from_the_global_scores():
    scores = np.array([0.0, 1.0, -2.0])
    pairs = np.array([[0, 1], [2, 1]])
    labels = pseudo_labels(
        np.array([1, 0]), np.array([0, 1]), "bradley-terry", bt_scores=scores, pairs=pairs
    )
    np.testing.assert_allclose(labels.p_star, expit([-1.0, -3.0]))
    np.testing.assert_allclose(labels.confidence, [1.0, 1.0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "majority"},
        {"mode": "bradley-terry"},
        {"min_confidence": 1.5},
        {"mode": "bradley-terry", "bt_scores": np.zeros(3), "pairs": np.zeros((1, 2), int)},
    ],
)
def test_bad_label_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        pseudo_labels(np.array([1, 2]), np.array([2, 1]), **kwargs)


def test_label_modes_are_all_accepted():
    for mode in LABEL_MODES:
        labels = pseudo_labels(
            np.array([2]), np.array([1]), mode, bt_scores=np.zeros(2), pairs=np.array([[0, 1]])
        )
        assert labels.p_star.shape == (1,)


def test_votes_to_comparisons_lists_every_direction_with_votes():
    winners, losers, counts = votes_to_comparisons(
        np.array([[0, 1], [2, 3]]), np.array([3, 0]), np.array([1, 2])
    )
    got = sorted(zip(winners.tolist(), losers.tolist(), counts.tolist(), strict=True))
    assert got == [(0, 1, 3), (1, 0, 1), (3, 2, 2)]


# ---------------------------------------------------------------- Bradley-Terry fit


def _reference_fit(n, winners, losers, counts, prior):
    def loss(s):
        return -(counts @ log_expit(s[winners] - s[losers])) + 0.5 * prior * s @ s

    def grad(s):
        r = counts * expit(-(s[winners] - s[losers]))
        return -np.bincount(winners, r, n) + np.bincount(losers, r, n) + prior * s

    result = minimize(
        loss, np.zeros(n), jac=grad, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 0}
    )
    return result.x - result.x.mean(), grad


def _random_votes(rng, n, n_votes):
    winners = rng.integers(n, size=n_votes)
    losers = (winners + rng.integers(1, n, size=n_votes)) % n
    return winners, losers, rng.integers(1, 4, size=n_votes).astype(float)


def test_fit_matches_a_generic_optimiser_on_the_same_objective():
    rng = np.random.default_rng(0)
    winners, losers, counts = _random_votes(rng, 30, 200)
    ours = fit_bradley_terry(30, winners, losers, counts, prior=0.1)
    reference, gradient = _reference_fit(30, winners, losers, counts, 0.1)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert np.abs(gradient(ours)).max() < 1e-8  # stationary point of a strictly convex objective
    assert abs(ours.mean()) < 1e-12


def test_duplicate_votes_equal_counts():
    winners, losers = np.array([0, 0, 0, 1, 2]), np.array([1, 1, 1, 2, 0])
    repeated = fit_bradley_terry(3, winners, losers)
    counted = fit_bradley_terry(3, np.array([0, 1, 2]), np.array([1, 2, 0]), np.array([3, 1, 1]))
    np.testing.assert_allclose(repeated, counted, atol=1e-9)


def test_unbeaten_and_isolated_items_stay_finite():
    # item 0 beats everyone, item 4 never plays
    scores = fit_bradley_terry(5, np.array([0, 0, 0, 1, 2]), np.array([1, 2, 3, 2, 3]))
    assert np.all(np.isfinite(scores))
    assert scores[0] == scores.max()
    assert abs(scores[4] - 0.0) < 1e-6


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), n_votes=st.integers(1, 60), seed=st.integers(0, 2**31))
def test_fit_is_invariant_to_relabelling_items(n, n_votes, seed):
    rng = np.random.default_rng(seed)
    winners, losers, counts = _random_votes(rng, n, n_votes)
    scores = fit_bradley_terry(n, winners, losers, counts)
    perm = rng.permutation(n)  # item x is called perm[x]
    relabelled = fit_bradley_terry(n, perm[winners], perm[losers], counts)
    np.testing.assert_allclose(relabelled[perm], scores, atol=1e-6)


def test_fit_rejects_bad_votes():
    with pytest.raises(ValueError):
        fit_bradley_terry(2, np.array([0]), np.array([2]))
    with pytest.raises(ValueError):
        fit_bradley_terry(2, np.array([1]), np.array([1]))
    with pytest.raises(ValueError):
        fit_bradley_terry(2, np.array([0]), np.array([1]), prior=0.0)


# ---------------------------------------------------------------- statistical claims

N_IMAGES = 400
SEEDS = range(8)


def _ranking_srcc(seed, sampler, pairs_per_image, k, all_votes=True):
    """SRCC vs truth of Bradley-Terry scores from all votes or from majority outcomes only."""
    quality = np.random.default_rng(1000 + seed).normal(size=N_IMAGES)
    judge = SimulatedJudge(temperature=temperature_for_accuracy(quality, 0.7), seed=seed)
    pairs = plan_pairs(N_IMAGES, pairs_per_image * N_IMAGES, sampler, seed)
    counts = tally(*simulate_choices(judge, quality, pairs, k))
    a, b = counts.votes_a, counts.votes_b
    if not all_votes:
        a, b = (a > b).astype(int), (b > a).astype(int)
    scores = fit_bradley_terry(N_IMAGES, *votes_to_comparisons(pairs, a, b))
    return spearmanr(scores, quality).statistic


def _paired(better, worse):
    diff = np.array([better(s) - worse(s) for s in SEEDS])
    return diff.mean(), diff.std(ddof=1) / np.sqrt(len(diff))


def test_ranking_improves_with_votes_per_pair():
    mean, se = _paired(
        lambda s: _ranking_srcc(s, "random", 3, 8), lambda s: _ranking_srcc(s, "random", 3, 2)
    )
    assert mean > 2 * se and mean > 0.05


def test_ranking_improves_with_the_pair_budget():
    mean, se = _paired(
        lambda s: _ranking_srcc(s, "random", 6, 4), lambda s: _ranking_srcc(s, "random", 2, 4)
    )
    assert mean > 2 * se and mean > 0.05


def test_hard_majority_with_one_vote_is_worse_than_with_eight():
    mean, se = _paired(
        lambda s: _ranking_srcc(s, "random", 3, 8, all_votes=False),
        lambda s: _ranking_srcc(s, "random", 3, 1, all_votes=False),
    )
    assert mean > 2 * se and mean > 0.05


def test_balanced_pairs_beat_random_pairs_at_a_small_budget():
    mean, se = _paired(
        lambda s: _ranking_srcc(s, "balanced", 2, 4), lambda s: _ranking_srcc(s, "random", 2, 4)
    )
    assert mean > 2 * se


def test_balanced_pairs_are_never_worse_at_a_large_budget():
    mean, se = _paired(
        lambda s: _ranking_srcc(s, "balanced", 10, 4), lambda s: _ranking_srcc(s, "random", 10, 4)
    )
    assert mean > -2 * se - 0.002


def test_bradley_terry_on_all_votes_beats_majority_outcomes():
    mean, se = _paired(
        lambda s: _ranking_srcc(s, "random", 3, 5, all_votes=True),
        lambda s: _ranking_srcc(s, "random", 3, 5, all_votes=False),
    )
    assert mean > 2 * se and mean > 0.03
