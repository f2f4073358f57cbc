"""A simulated pairwise judge with known behaviour, for tests, benchmarks and the simulated engine.

For the first-shown image f and the second s: P(f wins) = sigmoid((q_f - q_s) / temperature),
inverted on a fixed ``pair_error`` fraction of unordered pairs (systematic errors, chosen by a
hash of the pair key and the seed), then with probability ``position_bias`` f wins regardless.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit

from evoquality.pairs import pair_keys as unordered_keys
from evoquality.prompts import answer_text
from evoquality.voting import order_plan

__all__ = [
    "SimulatedJudge",
    "answer_text",
    "simulate_choices",
    "single_vote_accuracy",
    "temperature_for_accuracy",
]


@dataclass
class SimulatedJudge:
    """A judge that never abstains; votes are reproducible for a seed and call sequence."""

    temperature: float = 0.5
    pair_error: float = 0.0
    position_bias: float = 0.0
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not (0 <= self.pair_error <= 1 and 0 <= self.position_bias <= 1):
            raise ValueError("pair_error and position_bias must be in [0, 1]")
        self._rng = np.random.default_rng(self.seed)

    def compare(
        self,
        q_first: np.ndarray,
        q_second: np.ndarray,
        n: int,
        pair_keys: np.ndarray | None = None,
    ) -> np.ndarray:
        """Choices int8 (P, n): 0 = the first-shown image wins, 1 = the second.

        ``pair_keys`` (one int per unordered pair) is required when ``pair_error > 0``.
        """
        p_first = self.first_wins(q_first, q_second, pair_keys)
        return (self._rng.random((len(p_first), n)) >= p_first[:, None]).astype(np.int8)

    def first_wins(
        self, q_first: np.ndarray, q_second: np.ndarray, pair_keys: np.ndarray | None = None
    ) -> np.ndarray:
        """P(the first-shown image wins) per pair, float64 (P,)."""
        q_first = np.asarray(q_first, dtype=np.float64)
        q_second = np.asarray(q_second, dtype=np.float64)
        margin = (q_first - q_second) / self.temperature
        if self.pair_error > 0:
            if pair_keys is None:
                raise ValueError("pair_error > 0 needs pair_keys (one key per unordered pair)")
            margin = np.where(self._flipped(np.asarray(pair_keys)), -margin, margin)
        return self.position_bias + (1.0 - self.position_bias) * expit(margin)

    def _flipped(self, keys: np.ndarray) -> np.ndarray:
        """Deterministic per (key, seed): splitmix64 of the key, uniform in [0, 1)."""
        x = keys.astype(np.uint64) + np.uint64(self.seed * GOLDEN % 2**64)
        return splitmix_uniform(x) < self.pair_error


GOLDEN = 0x9E3779B97F4A7C15


def splitmix_uniform(x: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) from uint64 counters (splitmix64's finaliser): a counter-based stream."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53


def simulate_choices(
    judge: SimulatedJudge, quality: np.ndarray, pairs: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """K positional choices per pair with ``order_plan(k)``'s orders: (choices (P, K), swapped)."""
    quality = np.asarray(quality, dtype=np.float64)
    a, b = pairs[:, 0], pairs[:, 1]
    swapped = order_plan(k)
    keys = unordered_keys(pairs, len(quality))
    choices = np.empty((len(pairs), k), dtype=np.int8)
    choices[:, ~swapped] = judge.compare(quality[a], quality[b], int((~swapped).sum()), keys)
    choices[:, swapped] = judge.compare(quality[b], quality[a], int(swapped.sum()), keys)
    return choices, swapped


def single_vote_accuracy(
    quality: np.ndarray, temperature: float, n_pairs: int = 20000, seed: int = 0
) -> float:
    """Expected share of single votes (no bias, no pair errors) that pick the better image."""
    gaps = _random_gaps(np.asarray(quality, dtype=np.float64), n_pairs, seed)
    return float(np.mean(expit(gaps / temperature)))


def temperature_for_accuracy(
    quality: np.ndarray, accuracy: float, n_pairs: int = 20000, seed: int = 0
) -> float:
    """Temperature giving single-vote ``accuracy`` over random pairs of ``quality``."""
    if not 0.5 < accuracy < 1.0:
        raise ValueError(f"accuracy must be in (0.5, 1), got {accuracy}")
    gaps = _random_gaps(np.asarray(quality, dtype=np.float64), n_pairs, seed)
    spread = float(np.mean(gaps))
    log_t = brentq(
        lambda lt: float(np.mean(expit(gaps / np.exp(lt)))) - accuracy,
        np.log(spread) - 15,
        np.log(spread) + 15,
    )
    return float(np.exp(log_t))


def _random_gaps(quality: np.ndarray, n_pairs: int, seed: int) -> np.ndarray:
    """|q_a - q_b| over random pairs of distinct quality."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(len(quality), size=(2, n_pairs))
    gaps = np.abs(quality[a] - quality[b])
    gaps = gaps[gaps > 0]
    if not len(gaps):
        raise ValueError("quality needs at least two distinct values")
    return gaps
