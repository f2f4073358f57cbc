"""IQA metrics: known values, invariances, NaN handling, size-weighted averages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from evoquality import metrics
from evoquality.metrics import evaluate, krcc, pairwise_accuracy, plcc, srcc, wavg

distinct = st.lists(st.floats(-100, 100), min_size=3, max_size=30, unique=True)


@settings(max_examples=80, deadline=None)
@given(pred=distinct, seed=st.integers(0, 2**31))
def test_rank_metrics_are_invariant_to_monotone_transforms(pred, seed):
    pred = np.array(pred)
    mos = np.random.default_rng(seed).normal(size=len(pred))
    transformed = np.arctan(pred / 10) * 7 + 3  # strictly increasing
    assume(len(np.unique(transformed)) == len(pred))
    assert srcc(transformed, mos) == pytest.approx(srcc(pred, mos))
    assert krcc(transformed, mos) == pytest.approx(krcc(pred, mos))
    assert pairwise_accuracy(transformed, mos) == pytest.approx(pairwise_accuracy(pred, mos))


def test_perfect_and_reversed_predictions():
    mos = np.linspace(1, 5, 50)
    for pred, sign in ((mos**3, 1.0), (-mos, -1.0)):
        assert srcc(pred, mos) == pytest.approx(sign)
        assert krcc(pred, mos) == pytest.approx(sign)
        assert pairwise_accuracy(pred, mos) == pytest.approx((sign + 1) / 2)


def _pairwise_loop(pred, mos):
    score, total = 0.0, 0
    for i in range(len(pred)):
        for j in range(i + 1, len(pred)):
            if mos[i] == mos[j]:
                continue
            total += 1
            agree = np.sign(pred[i] - pred[j]) * np.sign(mos[i] - mos[j])
            score += 1.0 if agree > 0 else 0.5 if agree == 0 else 0.0
    return score / total


@settings(max_examples=40, deadline=None)
@given(
    pred=st.lists(st.integers(0, 4), min_size=2, max_size=25),
    seed=st.integers(0, 2**31),
)
def test_pairwise_accuracy_matches_the_definition_with_ties(pred, seed):
    pred = np.array(pred, dtype=float)
    mos = np.random.default_rng(seed).integers(0, 3, size=len(pred)).astype(float)
    assume(len(np.unique(mos)) > 1)
    assert pairwise_accuracy(pred, mos) == pytest.approx(_pairwise_loop(pred, mos))


def test_pairwise_accuracy_subsamples_large_sets_deterministically(monkeypatch):
    rng = np.random.default_rng(0)
    mos = rng.normal(size=6000)
    pred = mos + rng.normal(size=6000)
    sampled = pairwise_accuracy(pred, mos)
    assert sampled == pairwise_accuracy(pred, mos)
    monkeypatch.setattr(metrics, "PAIRWISE_MAX_ITEMS", 10_000)
    assert abs(sampled - pairwise_accuracy(pred, mos)) < 0.01


def test_logistic_plcc_linearises_a_saturating_relation():
    rng = np.random.default_rng(1)
    pred = rng.uniform(-6, 6, size=300)
    mos = 1 + 4 / (1 + np.exp(-pred)) + rng.normal(scale=0.05, size=300)
    raw, fitted = plcc(pred, mos), plcc(pred, mos, logistic=True)
    assert fitted > 0.99 and fitted > raw + 0.03


def test_logistic_plcc_falls_back_to_raw_when_the_fit_fails(monkeypatch):
    def failing_fit(*args, **kwargs):
        raise RuntimeError("no convergence")

    monkeypatch.setattr(metrics, "curve_fit", failing_fit)
    pred, mos = np.arange(10.0), np.arange(10.0) ** 2
    assert plcc(pred, mos, logistic=True) == pytest.approx(plcc(pred, mos))


def test_evaluate_drops_missing_predictions():
    mos = np.arange(10.0)
    pred = mos * 2
    pred[[3, 7]] = np.nan
    result = evaluate(pred, mos)
    assert result["n"] == 8 and result["n_missing"] == 2
    for key in ("srcc", "krcc", "plcc", "plcc_logistic", "pairwise_accuracy"):
        assert result[key] == pytest.approx(1.0)
    empty = evaluate(np.full(3, np.nan), np.arange(3.0))
    assert empty["n"] == 0 and np.isnan(empty["srcc"])


def test_wavg_weights_by_size_and_skips_nan():
    results = {
        "a": {"srcc": 0.9, "plcc": 0.8, "krcc": 0.7, "n": 100},
        "b": {"srcc": 0.6, "plcc": np.nan, "krcc": 0.4, "n": 300},
    }
    averaged = wavg(results)
    assert averaged["srcc"] == pytest.approx(0.675)
    assert averaged["plcc"] == pytest.approx(0.8)
    assert averaged["krcc"] == pytest.approx(0.475)
