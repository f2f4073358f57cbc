"""A simulated engine: a judge with known behaviour that reads each image's hidden truth (MOS).

A test and benchmark device only (never a default). It needs no pixels (``needs_pixels = False``),
so stages can run it on 1e5-image pools without loading a single image, and it answers in the real
format so the same parsing, voting and ranking code runs on its output.

Randomness: comparisons use `evoquality.simulation.SimulatedJudge` (its systematic pair errors are
fixed by the engine seed; its uniforms are a counter-based stream per ``(engine seed, request
seed)``, vectorised over a call, so a request's votes do not depend on its batch or shard).
Scores are ``truth + N(0, score_noise)`` clipped to [1, 5], seeded per image by ``(seed, request
seed, key)`` (greedy: by ``(seed, key)`` only).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from evoquality import prompts
from evoquality.engines.base import Answers, Engine, EngineImage, Images, Pairs, Sampling
from evoquality.simulation import GOLDEN, SimulatedJudge, splitmix_uniform

_MASK62 = (1 << 62) - 1


def stable_key(text: str) -> int:
    """A 62-bit integer from a string, the same in every process (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") & _MASK62


def unordered_pair_key(a: str, b: str) -> int:
    first, second = sorted((a, b))
    return stable_key(f"{first}\x00{second}")


class SimulatedEngine(Engine):
    name = "simulated"
    needs_pixels = False

    def __init__(self, settings, seed: int = 0, reasoning: bool = True) -> None:
        """``settings``: `evoquality.spec.SimulatedJudgeSpec` (temperature, pair_error,
        position_bias, score_noise)."""
        super().__init__(reasoning=reasoning)
        self.settings = settings
        self.seed = seed
        self.judge = SimulatedJudge(
            temperature=settings.temperature,
            pair_error=settings.pair_error,
            position_bias=settings.position_bias,
            seed=seed,
        )

    @staticmethod
    def _truths(images: Sequence[EngineImage]) -> np.ndarray:
        missing = [item.key for item in images if item.truth is None]
        if missing:
            raise ValueError(
                f"the simulated engine needs each image's truth (mos); missing for {missing[:3]}"
            )
        return np.array([float(item.truth) for item in images], dtype=np.float64)

    def _compare_text(self, choice: int) -> str:
        answer = prompts.answer_text(choice)
        if not self.reasoning:
            return answer
        which = "first" if choice == prompts.CHOICE_FIRST else "second"
        return f"<think>The {which} image has the better visual quality.</think> {answer}"

    def _score_text(self, value: float) -> str:
        answer = f"\\boxed{{{value:.2f}}}"
        if not self.reasoning:
            return answer
        return f"<think>Judging sharpness, noise and exposure.</think> {answer}"

    def _compare(self, pairs: Pairs, n: int, sampling: Sampling, seeds: list[int]) -> Answers:
        if not pairs:
            return []
        first = self._truths([a for a, _ in pairs])
        second = self._truths([b for _, b in pairs])
        keys = np.array([unordered_pair_key(a.key, b.key) for a, b in pairs], dtype=np.int64)
        seed_array = np.array(seeds, dtype=np.uint64)
        p_first = self.judge.first_wins(first, second, keys)
        choices = self._uniforms(seed_array, n) >= p_first[:, None]
        self.stats["requests"] += len(pairs)
        return [[self._compare_text(int(c)) for c in row] for row in choices]

    def _uniforms(self, seeds: np.ndarray, n: int) -> np.ndarray:
        """(len(seeds), n) uniforms, a counter-based stream per (engine seed, request seed)."""
        base = seeds ^ np.uint64(self.seed * GOLDEN % 2**64)
        steps = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN)
        return splitmix_uniform(base[:, None] + steps[None, :])

    def _score(self, images: Images, n: int, sampling: Sampling, seeds: list[int]) -> Answers:
        truths = self._truths(images)
        noise = self.settings.score_noise
        out = []
        for item, truth, seed in zip(images, truths, seeds, strict=True):
            if sampling.greedy:  # one fixed answer per image
                rng = np.random.default_rng([self.seed, stable_key(item.key)])
                values = np.repeat(truth + rng.normal(0.0, noise), n)
            else:
                rng = np.random.default_rng([self.seed, seed, stable_key(item.key)])
                values = truth + rng.normal(0.0, noise, size=n)
            out.append([self._score_text(v) for v in np.clip(values, 1.0, 5.0)])
        self.stats["requests"] += len(images)
        return out
