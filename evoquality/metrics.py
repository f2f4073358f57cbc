"""IQA metrics: SRCC, KRCC, PLCC (raw and after the VQEG logistic fit), pairwise accuracy.

Predictions may hold NaN (unparseable answers): ``evaluate`` drops them and reports how many.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import expit
from scipy.stats import bootstrap, kendalltau, pearsonr, spearmanr

PAIRWISE_MAX_ITEMS = 5000
_PAIRWISE_ROW_BLOCK = 512
_AVERAGED = ("srcc", "plcc", "krcc")


def srcc(pred: np.ndarray, mos: np.ndarray) -> float:
    """Spearman rank correlation."""
    return float(spearmanr(pred, mos).statistic)


def krcc(pred: np.ndarray, mos: np.ndarray) -> float:
    """Kendall rank correlation (tau-b)."""
    return float(kendalltau(pred, mos).statistic)


def vqeg_logistic(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic: b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))."""
    return b2 + (b1 - b2) * expit((x - b3) / np.abs(b4))


def plcc(pred: np.ndarray, mos: np.ndarray, logistic: bool = False) -> float:
    """Pearson correlation; with ``logistic`` after mapping pred by a fitted VQEG logistic.

    The fit falls back to the raw PLCC when it fails to converge.
    """
    pred = np.asarray(pred, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(mos) == 0:
        return float("nan")
    if logistic:
        guess = [mos.max(), mos.min(), float(np.median(pred)), float(np.std(pred)) / 2]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", OptimizeWarning)
                params, _ = curve_fit(vqeg_logistic, pred, mos, p0=guess, maxfev=10000)
            mapped = vqeg_logistic(pred, *params)
            if np.all(np.isfinite(mapped)) and np.ptp(mapped) > 0:
                pred = mapped
        except (RuntimeError, OptimizeWarning):
            pass
    return float(pearsonr(pred, mos).statistic)


def pairwise_accuracy(pred: np.ndarray, mos: np.ndarray) -> float:
    """Share of pairs with distinct MOS whose predictions are ordered the same way (pred ties 1/2).

    Above ``PAIRWISE_MAX_ITEMS`` items a fixed-seed subsample of that size is used.
    """
    pred = np.asarray(pred, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    if len(pred) > PAIRWISE_MAX_ITEMS:
        keep = np.random.default_rng(0).choice(len(pred), PAIRWISE_MAX_ITEMS, replace=False)
        pred, mos = pred[keep], mos[keep]
    score = 0.0
    n_ordered = 0
    for start in range(0, len(pred), _PAIRWISE_ROW_BLOCK):  # blocks of rows bound the memory
        rows = slice(start, start + _PAIRWISE_ROW_BLOCK)
        agree = np.sign(pred[rows, None] - pred[None, :]) * np.sign(mos[rows, None] - mos[None, :])
        ordered = mos[rows, None] != mos[None, :]
        n_ordered += int(ordered.sum())
        score += float((agree > 0).sum() + 0.5 * ((agree == 0) & ordered).sum())
    return score / n_ordered if n_ordered else float("nan")


def evaluate(pred: np.ndarray, mos: np.ndarray) -> dict[str, float]:
    """All metrics on the finite predictions; ``n`` used, ``n_missing`` NaN predictions dropped."""
    pred = np.asarray(pred, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    if pred.shape != mos.shape or pred.ndim != 1:
        raise ValueError(f"pred and mos must be 1-D of equal length, got {pred.shape}, {mos.shape}")
    found = np.isfinite(pred)
    pred, used_mos = pred[found], mos[found]
    enough = len(pred) >= 2
    nan = float("nan")
    return {
        "srcc": srcc(pred, used_mos) if enough else nan,
        "krcc": krcc(pred, used_mos) if enough else nan,
        "plcc": plcc(pred, used_mos),
        "plcc_logistic": plcc(pred, used_mos, logistic=True),
        "pairwise_accuracy": pairwise_accuracy(pred, used_mos),
        "n": float(len(pred)),
        "n_missing": float((~found).sum()),
    }


def wavg(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Average of srcc/plcc/krcc over benchmarks weighted by their ``n`` (NaN values skipped)."""
    averaged = {}
    for metric in _AVERAGED:
        values = np.array([r[metric] for r in results.values()], dtype=np.float64)
        sizes = np.array([r["n"] for r in results.values()], dtype=np.float64)
        ok = np.isfinite(values) & (sizes > 0)
        averaged[metric] = float(values[ok] @ sizes[ok] / sizes[ok].sum()) if ok.any() else np.nan
    return averaged


def correlation_interval(
    pred: np.ndarray,
    mos: np.ndarray,
    metric: str = "srcc",
    confidence: float = 0.95,
    resamples: int = 400,
    seed: int = 0,
) -> tuple[float, float]:
    """Bootstrap interval (percentile, images resampled with their MOS) of SRCC or PLCC over the
    finite predictions: how much the number would move on another draw of the same images."""
    pred = np.asarray(pred, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    found = np.isfinite(pred)
    pred, mos = pred[found], mos[found]
    if len(pred) < 3 or np.ptp(pred) == 0:
        return float("nan"), float("nan")
    statistic = srcc if metric == "srcc" else plcc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant resamples: NaN statistics, skipped
        result = bootstrap(
            (pred, mos),
            lambda p, m: statistic(p, m),
            paired=True,
            vectorized=False,
            n_resamples=resamples,
            confidence_level=confidence,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    return float(low), float(high)
