"""Vote order plans, tallies back to (a, b), position-bias statistic, agreement."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from evoquality.voting import agreement, order_plan, position_bias, tally


@pytest.mark.parametrize("k", [1, 2, 3, 8, 31, 32])
def test_order_plan_swaps_exactly_half(k):
    plan = order_plan(k)
    assert plan.dtype == bool and plan.shape == (k,)
    assert plan.sum() == k // 2
    assert (~plan).sum() - plan.sum() == k % 2


def test_order_plan_rejects_zero_votes():
    with pytest.raises(ValueError):
        order_plan(0)


def test_tally_maps_positions_back_to_a_and_b():
    # pair 0: a shown first then b shown first; both times a wins
    # pair 1: first-shown wins twice -> one vote each; pair 2: abstain + b wins as first shown
    choices = np.array([[0, 1], [0, 0], [-1, 0]])
    counts = tally(choices, np.array([False, True]))
    np.testing.assert_array_equal(counts.votes_a, [2, 1, 0])
    np.testing.assert_array_equal(counts.votes_b, [0, 1, 1])
    np.testing.assert_array_equal(counts.abstain, [0, 0, 1])
    assert counts.votes_a.dtype == np.int32


def test_balanced_orders_cancel_an_always_first_judge():
    choices = np.zeros((5, 8), dtype=int)  # the first-shown image always wins
    counts = tally(choices, order_plan(8))
    np.testing.assert_array_equal(counts.votes_a, counts.votes_b)
    assert position_bias(choices) == 1.0


@settings(max_examples=100, deadline=None)
@given(
    choices=arrays(
        np.int8,
        st.tuples(st.integers(0, 20), st.integers(1, 12)),
        elements=st.sampled_from([-1, 0, 1]),
    ),
    data=st.data(),
)
def test_tally_conserves_votes(choices, data):
    per_pair = data.draw(st.booleans())
    shape = choices.shape if per_pair else choices.shape[1:]
    swapped = data.draw(arrays(bool, shape))
    counts = tally(choices, swapped)
    np.testing.assert_array_equal(
        counts.votes_a + counts.votes_b + counts.abstain, choices.shape[1]
    )
    # swapping every vote exchanges the roles of a and b
    flipped = tally(choices, ~np.asarray(swapped))
    np.testing.assert_array_equal(flipped.votes_a, counts.votes_b)


def test_tally_rejects_bad_choices():
    with pytest.raises(ValueError):
        tally(np.array([[0, 2]]), np.array([False, True]))
    with pytest.raises(ValueError):
        tally(np.array([0, 1]), np.array([False, True]))


def test_position_bias_statistic():
    assert position_bias(np.array([[0, 1, -1], [1, 1, 0]])) == pytest.approx(2 / 5)
    assert position_bias(np.array([[0, 0, 1, -1]])) == pytest.approx(2 / 3)
    assert np.isnan(position_bias(np.full((2, 2), -1)))


def test_agreement():
    result = agreement(np.array([3, 2, 0, 0]), np.array([1, 2, 5, 0]))
    np.testing.assert_allclose(result[:3], [0.75, 0.5, 1.0])
    assert np.isnan(result[3])
