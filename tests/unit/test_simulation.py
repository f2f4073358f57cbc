"""The simulated judge: calibration, determinism, systematic pair errors, position bias, and that
balanced vote orders cancel the bias in the labels."""

from __future__ import annotations

import numpy as np
import pytest

from evoquality.pairs import pair_keys, plan_pairs
from evoquality.prompts import parse_choice
from evoquality.ranking import pseudo_labels
from evoquality.simulation import (
    SimulatedJudge,
    answer_text,
    simulate_choices,
    single_vote_accuracy,
    temperature_for_accuracy,
)
from evoquality.voting import position_bias, tally

QUALITY = np.random.default_rng(7).normal(size=500)


def test_compare_shape_values_and_determinism():
    q1, q2 = QUALITY[:50], QUALITY[50:100]
    first = SimulatedJudge(seed=3).compare(q1, q2, 6)
    assert first.shape == (50, 6) and set(np.unique(first)) <= {0, 1}
    np.testing.assert_array_equal(first, SimulatedJudge(seed=3).compare(q1, q2, 6))
    assert not np.array_equal(first, SimulatedJudge(seed=4).compare(q1, q2, 6))


@pytest.mark.parametrize("accuracy", [0.65, 0.75, 0.85])
def test_temperature_gives_the_requested_single_vote_accuracy(accuracy):
    temperature = temperature_for_accuracy(QUALITY, accuracy)
    assert single_vote_accuracy(QUALITY, temperature) == pytest.approx(accuracy, abs=1e-6)
    pairs = plan_pairs(len(QUALITY), 20_000, "random", 0)
    judge = SimulatedJudge(temperature=temperature, seed=0)
    choices, swapped = simulate_choices(judge, QUALITY, pairs, 4)
    counts = tally(choices, swapped)
    a_better = QUALITY[pairs[:, 0]] > QUALITY[pairs[:, 1]]
    correct = np.where(a_better, counts.votes_a, counts.votes_b).sum() / choices.size
    assert correct == pytest.approx(accuracy, abs=0.01)  # 80k votes: sd ~0.002


def test_pair_errors_are_systematic_per_unordered_pair():
    pairs = plan_pairs(len(QUALITY), 5000, "random", 1)
    judge = SimulatedJudge(temperature=0.01, pair_error=0.2, seed=5)  # near-deterministic votes
    counts = tally(*simulate_choices(judge, QUALITY, pairs, 6))
    gap = QUALITY[pairs[:, 0]] - QUALITY[pairs[:, 1]]
    wrong = np.where(gap > 0, counts.votes_b, counts.votes_a)[np.abs(gap) > 0.1]
    assert set(np.unique(wrong)) == {0, 6}  # a flipped pair is wrong in both orders, every vote
    assert np.mean(wrong == 6) == pytest.approx(0.2, abs=0.02)
    with pytest.raises(ValueError, match="pair_keys"):
        judge.compare(QUALITY[:2], QUALITY[2:4], 1)
    keys = pair_keys(pairs, len(QUALITY))
    np.testing.assert_array_equal(judge._flipped(keys), judge._flipped(keys))


def test_balanced_orders_cancel_a_position_bias():
    n = 400
    quality = np.zeros(n)  # equal quality: the truth is p* = 0.5 for every pair
    pairs = plan_pairs(n, 4000, "random", 2)
    judge = SimulatedJudge(temperature=0.5, position_bias=0.3, seed=2)
    choices, swapped = simulate_choices(judge, quality, pairs, 8)
    assert position_bias(choices) == pytest.approx(0.65, abs=0.01)  # 0.3 + 0.7 * 0.5
    balanced = pseudo_labels(*_votes(tally(choices, swapped)), mode="soft")
    unbalanced = pseudo_labels(*_votes(tally(choices, np.zeros(8, bool))), mode="soft")
    assert abs(balanced.p_star.mean() - 0.5) < 0.01
    assert unbalanced.p_star.mean() == pytest.approx(0.65, abs=0.01)


def test_biased_judge_labels_stay_correct_on_both_sides():
    pairs = plan_pairs(len(QUALITY), 6000, "random", 3)
    judge = SimulatedJudge(temperature=temperature_for_accuracy(QUALITY, 0.75), position_bias=0.2)
    labels = pseudo_labels(*_votes(tally(*simulate_choices(judge, QUALITY, pairs, 8))))
    a_better = QUALITY[pairs[:, 0]] > QUALITY[pairs[:, 1]]
    right_when_a = np.mean(labels.p_star[a_better] == 1.0)
    right_when_b = np.mean(labels.p_star[~a_better] == 0.0)
    assert right_when_a > 0.6 and abs(right_when_a - right_when_b) < 0.04


def _votes(counts):
    return counts.votes_a, counts.votes_b


def test_judge_validates_its_parameters():
    with pytest.raises(ValueError):
        SimulatedJudge(temperature=0.0)
    with pytest.raises(ValueError):
        SimulatedJudge(position_bias=1.5)
    with pytest.raises(ValueError):
        temperature_for_accuracy(QUALITY, 0.5)


def test_answer_text_is_parseable():
    assert parse_choice(answer_text(1)) == 1
