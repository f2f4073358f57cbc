"""Fidelity reward (against an explicit loop of the formula), format reward, confidence weights
and the TRL advantage formula they must survive."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evoquality.reward import (
    fidelity_rewards,
    format_rewards,
    group_advantages,
    weight_rewards,
)


def _loop_reference(scores, pref, eps=1e-6):
    """The fidelity reward written out sample by sample (statistics over valid samples)."""
    n, g = scores.shape
    stats = []
    for i in range(n):
        valid = [x for x in scores[i] if not math.isnan(x)]
        mean = sum(valid) / len(valid) if valid else math.nan
        var = sum((x - mean) ** 2 for x in valid) / (len(valid) - 1) if len(valid) > 1 else 0.0
        stats.append((mean, var, len(valid)))
    out = np.zeros((n, g))
    for i in range(n):
        partners = [
            j for j in range(n) if j != i and not math.isnan(pref[i, j]) and stats[j][2] >= 2
        ]
        for k in range(g):
            if math.isnan(scores[i, k]) or not partners:
                continue
            total = 0.0
            for j in partners:
                z = (scores[i, k] - stats[j][0]) / math.sqrt(stats[i][1] + stats[j][1] + eps)
                p = 0.5 * (1 + math.erf(z / math.sqrt(2)))
                total += math.sqrt(pref[i, j] * p) + math.sqrt((1 - pref[i, j]) * (1 - p))
            out[i, k] = total / len(partners)
    return out


def _random_case(rng, n, g, nan_share):
    scores = rng.uniform(1, 5, size=(n, g))
    scores[rng.random((n, g)) < nan_share] = np.nan
    pref = rng.choice([0.0, 0.5, 1.0, 0.8, np.nan], size=(n, n))
    np.fill_diagonal(pref, np.nan)
    return scores, pref


def test_matches_the_formula_written_as_loops():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores, pref = _random_case(rng, 4, 6, 0.25)
        np.testing.assert_allclose(fidelity_rewards(scores, pref), _loop_reference(scores, pref))


@settings(max_examples=60, deadline=None)
@given(
    scores=arrays(
        np.float64,
        st.tuples(st.integers(1, 5), st.integers(1, 8)),
        elements=st.one_of(st.floats(1, 5), st.just(np.nan)),
    ),
    data=st.data(),
)
def test_rewards_are_in_the_unit_interval_and_zero_for_unparseable(scores, data):
    n = scores.shape[0]
    pref = data.draw(
        arrays(np.float64, (n, n), elements=st.one_of(st.floats(0, 1), st.just(np.nan)))
    )
    rewards = fidelity_rewards(scores, pref)
    assert rewards.shape == scores.shape
    assert np.all((rewards >= 0) & (rewards <= 1 + 1e-12))
    assert np.all(rewards[np.isnan(scores)] == 0)


def test_rewards_follow_the_label_direction():
    scores = np.array([[4.0, 4.2, 3.9, 4.1], [2.0, 2.1, 1.9, 2.2]])  # image 0 clearly higher
    agree = fidelity_rewards(scores, np.array([[np.nan, 1.0], [0.0, np.nan]]))
    disagree = fidelity_rewards(scores, np.array([[np.nan, 0.0], [1.0, np.nan]]))
    assert np.all(agree > 0.99) and np.all(disagree < 0.01)


def test_missing_partners_and_single_samples():
    pref = np.array([[np.nan, 1.0, np.nan], [0.0, np.nan, np.nan], [np.nan, np.nan, np.nan]])
    scores = np.array([[3.0, np.nan, np.nan], [2.0, 2.5, 1.5], [4.0, 4.5, 3.0]])
    rewards = fidelity_rewards(scores, pref)
    # image 0 has one valid sample: rewarded against image 1 with v_0 = 0
    assert rewards[0, 0] > 0.5 and np.all(rewards[0, 1:] == 0)
    # image 1's only partner (image 0) has < 2 valid samples; image 2 has no label at all
    assert np.all(rewards[1] == 0) and np.all(rewards[2] == 0)


def test_rejects_bad_shapes_and_labels():
    with pytest.raises(ValueError):
        fidelity_rewards(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError):
        fidelity_rewards(np.ones((2, 3)), np.array([[np.nan, 1.5], [0.0, np.nan]]))


@pytest.mark.parametrize(
    ("text", "reasoning", "expected"),
    [
        ("<think>sharp, little noise</think> \\boxed{3.75}", True, 1.0),
        ("<think>sharp</think><answer>3.75</answer>", True, 0.0),
        ("\\boxed{3.75}", True, 0.0),
        ("<think></think>\\boxed{3.75}", True, 0.0),
        ("<think>ok</think> \\boxed{7}", True, 0.0),
        ("\\boxed{3.75}", False, 1.0),
        ("The score is \\boxed{2.00}.", False, 1.0),
        ("3.75", False, 0.0),
        ("\\boxed{great}", False, 0.0),
    ],
)
def test_format_rewards(text, reasoning, expected):
    assert format_rewards([text], reasoning).tolist() == [expected]


def test_group_advantages_follow_trl():
    rewards = np.array([[1.0, 0.0, 0.5, np.nan], [0.2, 0.2, 0.2, 0.2]])
    group = group_advantages(rewards, "group")
    np.testing.assert_allclose(group[0, :3], (rewards[0, :3] - 0.5) / (0.5 + 1e-4))
    np.testing.assert_allclose(group[1], 0.0)
    batch = group_advantages(rewards, "batch")
    batch_std = np.std(rewards[np.isfinite(rewards)], ddof=1)
    np.testing.assert_allclose(batch[0, :3], (rewards[0, :3] - 0.5) / (batch_std + 1e-4))
    np.testing.assert_allclose(group_advantages(rewards, "none")[0, :3], [0.5, -0.5, 0.0])
    with pytest.raises(ValueError):
        group_advantages(rewards, "token")


def test_confidence_weights_cancel_under_group_scaling_only():
    rng = np.random.default_rng(0)
    rewards = rng.uniform(size=(6, 8))
    weights = rng.uniform(0.2, 1.0, size=6)
    weighted = weight_rewards(rewards, weights)
    np.testing.assert_allclose(weighted, rewards * weights[:, None])
    # a per-image constant factor cancels in a per-group z-score (up to TRL's 1e-4 epsilon)
    np.testing.assert_allclose(
        group_advantages(weighted, "group"), group_advantages(rewards, "group"), rtol=5e-3
    )
    for scale in ("batch", "none"):
        changed = group_advantages(weighted, scale) - group_advantages(rewards, scale)
        assert np.abs(changed).max() > 0.05
    with pytest.raises(ValueError):
        weight_rewards(rewards, weights[:3])
