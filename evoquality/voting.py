"""Votes: which image is shown first in each of the K votes of a pair, and vote tallies.

A pair (a, b) is voted K times; in ``order_plan(K)``'s swapped votes b is shown first. Raw choices
are positional (0 = the first-shown image wins, 1 = the second, -1 = abstain); ``tally`` maps them
back to a and b, which cancels a judge's position bias in the labels when the two orders are
balanced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ABSTAIN = -1


def order_plan(k: int) -> np.ndarray:
    """Bool (k,): True = the pair is shown swapped (b first). Exactly ``k // 2`` are swapped.

    Orders alternate a-first, b-first, ...; with odd k the a-first order has one vote more.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return np.arange(k) % 2 == 1


@dataclass
class VoteCounts:
    """Per-pair counts of votes for a, for b, and abstentions (int32 arrays of length P)."""

    votes_a: np.ndarray
    votes_b: np.ndarray
    abstain: np.ndarray


def tally(choices: np.ndarray, swapped: np.ndarray) -> VoteCounts:
    """Count votes per pair. ``choices`` int (P, K) in {0, 1, -1}; ``swapped`` (K,) or (P, K)."""
    choices = np.asarray(choices)
    if choices.ndim != 2:
        raise ValueError(f"choices must be 2-D (pairs, votes), got shape {choices.shape}")
    if not np.isin(choices, (0, 1, ABSTAIN)).all():
        raise ValueError("choices must only hold 0 (first shown wins), 1 (second) or -1 (abstain)")
    swapped = np.broadcast_to(np.asarray(swapped, dtype=bool), choices.shape)
    a_wins = np.where(swapped, choices == 1, choices == 0)
    b_wins = np.where(swapped, choices == 0, choices == 1)
    return VoteCounts(
        votes_a=a_wins.sum(axis=1, dtype=np.int32),
        votes_b=b_wins.sum(axis=1, dtype=np.int32),
        abstain=(choices == ABSTAIN).sum(axis=1, dtype=np.int32),
    )


def position_bias(choices: np.ndarray) -> float:
    """Share of non-abstaining votes won by the first-shown image (0.5 = unbiased; nan if none)."""
    choices = np.asarray(choices)
    cast = choices[choices != ABSTAIN]
    return float(np.mean(cast == 0)) if cast.size else float("nan")


def agreement(votes_a: np.ndarray, votes_b: np.ndarray) -> np.ndarray:
    """Per pair ``max(a, b) / (a + b)``: 1 = unanimous, 0.5 = split; nan where no votes."""
    votes_a = np.asarray(votes_a, dtype=np.float64)
    votes_b = np.asarray(votes_b, dtype=np.float64)
    total = votes_a + votes_b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, np.maximum(votes_a, votes_b) / total, np.nan)
