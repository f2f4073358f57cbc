"""Pair designs: validity, determinism, degree balance, group constraints, sharding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from evoquality.pairs import SAMPLERS, pair_keys, plan_pairs, shard_bounds


def _max_pairs(n: int) -> int:
    return n * (n - 1) // 2


def _assert_valid(pairs: np.ndarray, n: int, expected: int) -> None:
    assert pairs.dtype == np.int64
    assert pairs.shape == (expected, 2)
    assert np.all((pairs >= 0) & (pairs < n))
    assert np.all(pairs[:, 0] != pairs[:, 1])
    assert len(np.unique(pair_keys(pairs, n))) == len(pairs)


def _degrees(pairs: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(pairs.ravel(), minlength=n)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 40),
    n_pairs=st.integers(0, 900),
    sampler=st.sampled_from(["random", "balanced", "adaptive"]),
    seed=st.integers(0, 2**31),
)
def test_pairs_are_distinct_valid_and_deterministic(n, n_pairs, sampler, seed):
    scores = np.random.default_rng(seed).normal(size=n)
    pairs = plan_pairs(n, n_pairs, sampler, seed, prev_scores=scores)
    _assert_valid(pairs, n, min(n_pairs, _max_pairs(n)))
    again = plan_pairs(n, n_pairs, sampler, seed, prev_scores=scores)
    np.testing.assert_array_equal(pairs, again)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 60), n_pairs=st.integers(0, 2000), seed=st.integers(0, 2**31))
def test_balanced_degrees_differ_by_at_most_one(n, n_pairs, seed):
    degrees = _degrees(plan_pairs(n, n_pairs, "balanced", seed), n)
    assert degrees.max() - degrees.min() <= 1


@settings(max_examples=40, deadline=None)
@given(
    groups=st.lists(st.integers(0, 6), min_size=2, max_size=40),
    n_pairs=st.integers(0, 200),
    seed=st.integers(0, 2**31),
)
def test_same_reference_pairs_stay_inside_groups(groups, n_pairs, seed):
    groups = np.array(groups)
    sizes = np.bincount(groups)
    pairs = plan_pairs(len(groups), n_pairs, "same-reference", seed, groups=groups)
    _assert_valid(pairs, len(groups), min(n_pairs, int((sizes * (sizes - 1) // 2).sum())))
    assert np.all(groups[pairs[:, 0]] == groups[pairs[:, 1]])


def test_random_pairs_are_uniform_and_randomly_oriented():
    n, n_pairs, runs = 8, 5, 2000
    counts = np.zeros(n * n)
    first_smaller = 0
    for seed in range(runs):
        pairs = plan_pairs(n, n_pairs, "random", seed)
        counts[pair_keys(pairs, n)] += 1
        first_smaller += int(np.sum(pairs[:, 0] < pairs[:, 1]))
    expected = runs * n_pairs / _max_pairs(n)  # ~357 per pair, sd ~17
    observed = counts[counts > 0]
    assert len(observed) == _max_pairs(n)
    assert np.all(np.abs(observed - expected) < 6 * np.sqrt(expected))
    assert abs(first_smaller / (runs * n_pairs) - 0.5) < 0.02


def test_balanced_avoids_the_unpaired_images_of_random_designs():
    n = 2000
    random_degrees = _degrees(plan_pairs(n, 2 * n, "random", 0), n)
    balanced_degrees = _degrees(plan_pairs(n, 2 * n, "balanced", 0), n)
    assert np.sum(random_degrees == 0) > 10  # ~e^-4 of the images
    np.testing.assert_array_equal(balanced_degrees, 4)


def test_balanced_design_is_randomised_not_a_fixed_lattice():
    n = 500
    a = pair_keys(plan_pairs(n, 3 * n, "balanced", 1), n)
    b = pair_keys(plan_pairs(n, 3 * n, "balanced", 2), n)
    assert len(np.intersect1d(a, b)) < 0.05 * len(a)


def test_adaptive_pairs_neighbours_in_score_order():
    n = 100
    scores = np.random.default_rng(3).permutation(n).astype(float)
    pairs = plan_pairs(n, 150, "adaptive", 0, prev_scores=scores)
    gaps = np.abs(scores[pairs[:, 0]] - scores[pairs[:, 1]])
    assert set(np.unique(gaps)) == {1.0, 2.0}
    assert np.sum(gaps == 1) == n - 1  # every adjacent pair first, then offset 2


def test_large_designs_stay_valid():
    n, n_pairs = 100_000, 1_000_000
    _assert_valid(plan_pairs(n, n_pairs, "random", 0), n, n_pairs)
    balanced = plan_pairs(n, 200_000, "balanced", 0)
    _assert_valid(balanced, n, 200_000)
    assert np.all(_degrees(balanced, n) == 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_images": 1, "n_pairs": 3, "sampler": "random"}, "at least 2 images"),
        ({"n_images": 5, "n_pairs": -1, "sampler": "random"}, "n_pairs"),
        ({"n_images": 5, "n_pairs": 3, "sampler": "nope"}, "unknown sampler"),
        ({"n_images": 5, "n_pairs": 3, "sampler": "adaptive"}, "prev_scores"),
        ({"n_images": 5, "n_pairs": 3, "sampler": "same-reference"}, "groups"),
        (
            {"n_images": 5, "n_pairs": 3, "sampler": "same-reference", "groups": np.zeros(4)},
            "shape",
        ),
        (
            {"n_images": 3, "n_pairs": 1, "sampler": "adaptive", "prev_scores": [0, np.nan, 1]},
            "finite",
        ),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_pairs(seed=0, **kwargs)


def test_every_sampler_is_handled():
    for sampler in SAMPLERS:
        pairs = plan_pairs(6, 4, sampler, 0, groups=np.arange(6) % 2, prev_scores=np.arange(6.0))
        _assert_valid(pairs, 6, 4)


@settings(max_examples=100, deadline=None)
@given(n_pairs=st.integers(0, 10_000), num_shards=st.integers(1, 64))
def test_shards_partition_the_pairs_exactly(n_pairs, num_shards):
    bounds = [shard_bounds(n_pairs, s, num_shards) for s in range(num_shards)]
    covered = np.concatenate([np.arange(start, stop) for start, stop in bounds])
    np.testing.assert_array_equal(covered, np.arange(n_pairs))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("shard", "num_shards"), [(-1, 4), (4, 4), (0, 0)])
def test_shard_out_of_range_is_rejected(shard, num_shards):
    with pytest.raises(ValueError):
        shard_bounds(10, shard, num_shards)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 80), per_image=st.floats(1.0, 4.0), seed=st.integers(0, 2**31))
def test_balanced_designs_with_n_pairs_or_more_are_connected(n, per_image, seed):
    pairs = plan_pairs(n, int(per_image * n), "balanced", seed)
    graph = coo_array((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    assert connected_components(graph, directed=False)[0] == 1
