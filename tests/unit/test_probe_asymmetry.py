"""The probe's comparison-against-scoring arithmetic (`experiments.probe`): the K-vote majority's
accuracy from per-order vote accuracies, and digits drawn from a probed distribution."""

from __future__ import annotations

import numpy as np
import pytest

from evoquality.experiments.probe import majority_accuracy, sampled_digits


@pytest.mark.parametrize("k", [2, 4, 8])
def test_majority_accuracy_matches_a_simulation(k):
    rng = np.random.default_rng(0)
    first, second = rng.random(6), rng.random(6)
    votes = 200_000
    right = rng.binomial(k // 2, first[:, None], (6, votes)) + rng.binomial(
        k // 2, second[:, None], (6, votes)
    )
    simulated = (right > k / 2).mean(1) + 0.5 * (right == k / 2).mean(1)
    assert np.allclose(majority_accuracy(first, second, k), simulated, atol=0.005)


def test_majority_of_reliable_votes_beats_one_vote_and_coin_flips_stay_coin_flips():
    acc = majority_accuracy(np.array([0.65, 0.5, 1.0, 0.0]), np.array([0.65, 0.5, 1.0, 0.0]), 8)
    assert acc[0] > 0.75 and acc[1] == pytest.approx(0.5) and acc[2] == 1.0 and acc[3] == 0.0


def test_sampled_digits_follow_the_probed_distribution():
    p = np.array([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 2.0], [1.0, 1.0, 1.0, 1.0, 0]])
    digits = sampled_digits(p, 20_000, np.random.default_rng(1))
    assert set(np.unique(digits[0])) == {1} and set(np.unique(digits[1])) == {5}
    counts = np.bincount(digits[2], minlength=6)[1:] / 20_000
    assert np.allclose(counts, [0.25, 0.25, 0.25, 0.25, 0.0], atol=0.015)


def test_sample_tau_is_the_expected_kendall_tau_of_one_sampled_digit():
    from evoquality.experiments.probe import sample_tau

    mos = np.array([1.0, 2.0, 3.0, 4.0, 4.0])
    sharp = np.eye(5)[[0, 1, 2, 3, 3]]
    assert sample_tau(sharp, mos) == pytest.approx(1.0)
    assert sample_tau(np.eye(5)[[4, 3, 2, 1, 0]], mos) == pytest.approx(-1.0)
    assert sample_tau(np.eye(5)[[0, 0, 2, 3, 3]], mos) == pytest.approx(8 / 9)  # a digit tie: 0
    assert sample_tau(np.ones((5, 5)), mos) == pytest.approx(0.0)
    rng = np.random.default_rng(3)
    p = rng.random((5, 5)) ** 3
    digits = sampled_digits(p, 20_000, rng)  # (images, draws)
    sign = np.sign(mos[:, None] - mos[None, :])
    concord = np.sign(digits[:, None, :] - digits[None, :, :]) * sign[:, :, None]
    simulated = concord.sum((0, 1)).mean() / np.count_nonzero(sign)
    assert sample_tau(p, mos) == pytest.approx(simulated, abs=0.02)
