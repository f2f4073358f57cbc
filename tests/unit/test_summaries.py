"""Merging shard metrics and choosing the best round."""

import pytest

from evoquality.summaries import best_round, merge_vote_metrics, should_stop_early


def test_merge_weights_rates_by_pairs_and_sums_counts():
    merged = merge_vote_metrics(
        [
            {"pairs": 10, "votes": 40, "agreement": 1.0, "tie_rate": 0.0, "pairs_per_s": 2.0},
            {"pairs": 30, "votes": 120, "agreement": 0.6, "tie_rate": 0.2, "pairs_per_s": 3.0},
        ]
    )
    assert merged["pairs"] == 40 and merged["votes"] == 160
    assert merged["agreement"] == pytest.approx((10 * 1.0 + 30 * 0.6) / 40)
    assert merged["tie_rate"] == pytest.approx(0.15)
    assert merged["pairs_per_s"] == pytest.approx(5.0)
    assert merged["position_bias"] is None


def test_best_round_prefers_validation_and_keeps_earliest_tie():
    evals = {
        None: {"validation.srcc": 0.5, "wavg.srcc": 0.9},
        0: {"validation.srcc": 0.7, "wavg.srcc": 0.1},
        1: {"validation.srcc": 0.7},
    }
    assert best_round(evals) == (0, 0.7)
    assert best_round({None: {"wavg.srcc": 0.2}, 0: {"wavg.srcc": 0.3}}) == (0, 0.3)


def test_early_stop_only_on_a_validation_drop():
    evals = {
        None: {"validation.srcc": 0.5},
        0: {"validation.srcc": 0.6},
        1: {"validation.srcc": 0.55},
    }
    assert not should_stop_early(evals, 0)
    assert should_stop_early(evals, 1)
    assert not should_stop_early({None: {"wavg.srcc": 0.9}, 0: {"wavg.srcc": 0.1}}, 0)
