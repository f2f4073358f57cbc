"""Pseudo-labels from votes (hard / soft / Bradley-Terry) and the Bradley-Terry fit.

``fit_bradley_terry`` maximises the Bradley-Terry log-likelihood of every individual vote plus a
tiny Gaussian prior on the log-strengths (so unbeaten or disconnected items stay finite) by damped
Newton steps, each solved by Jacobi-preconditioned conjugate gradients on the sparse weighted
Laplacian. Cost per Newton step: a few dozen sparse mat-vecs over the distinct compared pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import LinearOperator, cg
from scipy.special import expit, log_expit

LABEL_MODES = ("hard", "soft", "bradley-terry")
_MAX_NEWTON_STEPS = 100
_CG_RTOL = 1e-2  # inexact Newton steps: a few more steps, far fewer CG iterations


@dataclass
class Labels:
    """Per pair: p* = P(a better than b), confidence |a - b| / (a + b), training weight, keep."""

    p_star: np.ndarray
    confidence: np.ndarray
    weight: np.ndarray
    keep: np.ndarray


def pseudo_labels(
    votes_a: np.ndarray,
    votes_b: np.ndarray,
    mode: str = "hard",
    min_confidence: float = 0.0,
    confidence_weighting: bool = False,
    bt_scores: np.ndarray | None = None,
    pairs: np.ndarray | None = None,
) -> Labels:
    """Labels per pair from its votes.

    hard: majority p* in {1, 0.5, 0} (ties 0.5, the paper); soft: vote share of a;
    bradley-terry: sigmoid(s_a - s_b) from global ``bt_scores`` indexed by ``pairs``.
    Pairs without votes get p* = 0.5 and keep = False.
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"unknown label mode {mode!r}; choose one of {LABEL_MODES}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
    votes_a = np.asarray(votes_a, dtype=np.float64)
    votes_b = np.asarray(votes_b, dtype=np.float64)
    if votes_a.shape != votes_b.shape or votes_a.ndim != 1:
        raise ValueError("votes_a and votes_b must be 1-D arrays of the same length")
    total = votes_a + votes_b
    voted = total > 0
    safe_total = np.where(voted, total, 1.0)
    confidence = np.abs(votes_a - votes_b) / safe_total
    if mode == "hard":
        p_star = 0.5 + 0.5 * np.sign(votes_a - votes_b)
    elif mode == "soft":
        p_star = np.where(voted, votes_a / safe_total, 0.5)
    else:
        if bt_scores is None or pairs is None:
            raise ValueError("mode 'bradley-terry' needs bt_scores and pairs")
        pairs = np.asarray(pairs, dtype=np.int64)
        if pairs.shape != (len(votes_a), 2):
            raise ValueError(f"pairs must have shape ({len(votes_a)}, 2), got {pairs.shape}")
        scores = np.asarray(bt_scores, dtype=np.float64)
        p_star = expit(scores[pairs[:, 0]] - scores[pairs[:, 1]])
    return Labels(
        p_star=np.asarray(p_star, dtype=np.float64),
        confidence=confidence,
        weight=confidence.copy() if confidence_weighting else np.ones_like(confidence),
        keep=voted & (confidence >= min_confidence),
    )


def votes_to_comparisons(
    pairs: np.ndarray, votes_a: np.ndarray, votes_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(winners, losers, counts) of all individual votes, one row per pair and direction."""
    pairs = np.asarray(pairs, dtype=np.int64)
    votes_a = np.asarray(votes_a, dtype=np.int64)
    votes_b = np.asarray(votes_b, dtype=np.int64)
    winners = np.concatenate((pairs[:, 0], pairs[:, 1]))
    losers = np.concatenate((pairs[:, 1], pairs[:, 0]))
    counts = np.concatenate((votes_a, votes_b))
    cast = counts > 0
    return winners[cast], losers[cast], counts[cast]


def fit_bradley_terry(
    n_items: int,
    winners: np.ndarray,
    losers: np.ndarray,
    counts: np.ndarray | None = None,
    prior: float = 1e-3,
    tol: float = 1e-8,
) -> np.ndarray:
    """Maximum a-posteriori Bradley-Terry log-strengths (mean 0) of ``n_items``.

    Maximises ``sum counts * log sigmoid(s_w - s_l) - prior / 2 * |s|^2``; stops when the largest
    (undamped) Newton step is below ``tol``.
    """
    if prior <= 0:
        raise ValueError(f"prior must be > 0 (it keeps unbeaten items finite), got {prior}")
    winners = np.asarray(winners, dtype=np.int64)
    losers = np.asarray(losers, dtype=np.int64)
    counts = np.ones(len(winners)) if counts is None else np.asarray(counts, dtype=np.float64)
    if not winners.shape == losers.shape == counts.shape or winners.ndim != 1:
        raise ValueError("winners, losers and counts must be 1-D arrays of the same length")
    if len(winners) and (
        min(winners.min(), losers.min()) < 0 or max(winners.max(), losers.max()) >= n_items
    ):
        raise ValueError(f"item indices must be in [0, {n_items})")
    if np.any(winners == losers) or np.any(counts < 0):
        raise ValueError("an item cannot beat itself and counts must be >= 0")
    i, j, wins_i, total = _aggregate(n_items, winners, losers, counts)
    # pairs are sorted by (i, j): W holds each compared pair once, W.T the mirror entries
    upper = sparse.csr_array(
        (np.zeros(len(i)), j, np.concatenate(([0], np.cumsum(np.bincount(i, minlength=n_items))))),
        shape=(n_items, n_items),
    )

    def objective(s: np.ndarray) -> float:
        d = s[i] - s[j]
        log_p = log_expit(d)  # log P(i beats j); log P(j beats i) = log_p - d
        return float(-(total @ log_p) + (total - wins_i) @ d + 0.5 * prior * (s @ s))

    s = np.zeros(n_items)
    value = objective(s)
    for _ in range(_MAX_NEWTON_STEPS):
        p = expit(s[i] - s[j])
        residual = wins_i - total * p  # d loglik / d s_i of each pair
        grad = np.bincount(i, residual, n_items) - np.bincount(j, residual, n_items) - prior * s
        upper.data = total * p * (1.0 - p)
        diagonal = prior + np.bincount(i, upper.data, n_items) + np.bincount(j, upper.data, n_items)
        hessian = LinearOperator(
            upper.shape, matvec=lambda x, d=diagonal: d * x - upper @ x - upper.T @ x
        )
        jacobi = LinearOperator(upper.shape, matvec=lambda x, d=diagonal: x / d)
        step, _ = cg(hessian, grad, rtol=_CG_RTOL, M=jacobi)
        scale = 1.0
        # damping: far from the optimum Newton's step can overshoot; the slack ignores rounding
        # noise of the objective, which near the optimum exceeds the decrease of a good step
        while (new_value := objective(s + scale * step)) > value + 1e-12 * abs(value):
            scale *= 0.5
            if scale < 1e-6:
                break
        s, value = s + scale * step, new_value
        if np.max(np.abs(step), initial=0.0) < tol:
            break
    return s - s.mean()


def _aggregate(
    n_items: int, winners: np.ndarray, losers: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge duplicate votes per unordered pair (i < j): wins of i and total comparisons."""
    i, j = np.minimum(winners, losers), np.maximum(winners, losers)
    keys, inverse = np.unique(i * n_items + j, return_inverse=True)
    total = np.bincount(inverse, counts, len(keys))
    wins_i = np.bincount(inverse, np.where(winners == i, counts, 0.0), len(keys))
    used = total > 0
    keys, total, wins_i = keys[used], total[used], wins_i[used]
    return keys // n_items, keys % n_items, wins_i, total
