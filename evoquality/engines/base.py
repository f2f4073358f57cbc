"""The inference engine interface shared by voting and evaluation.

An engine answers two kinds of request, each sampled ``n`` times:

* ``compare``: an ORDERED pair of images (``pair[0]`` is shown first) with
  ``prompts.comparison_prompt(reasoning)``;
* ``score``: one image with ``prompts.scoring_prompt(reasoning)``.

It returns the raw answer texts; parsing (``prompts.parse_choice`` / ``parse_score``) is the
caller's.

Randomness is per request: each request carries its own seed (the stages derive it from the run
seed, the round and the pair id and order, or the image, with `derive_seed`), so a request's
samples do not depend on which other requests share its call, its batch or its shard. Without
explicit seeds, request i of a call gets ``derive_seed(sampling.seed, i)``.
Images arrive already prepared (``evoquality.data.images.prepare_image``: both sides multiples of 28
within the pixel caps) so every engine and the trainer see the same pixels and the same token grid.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evoquality import prompts

if TYPE_CHECKING:
    from PIL import Image


_SEED_BITS = 62  # leaves room for vLLM's seed + i per sample, inside a signed 64-bit integer


def derive_seed(*parts: int | str) -> int:
    """A 62-bit seed from integers and strings: the same in every process and on every machine."""
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - _SEED_BITS)


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int  # the call's seed: per-request seeds default to derive_seed(seed, i)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(frozen=True)
class EngineImage:
    key: str
    image: Image.Image | None
    truth: float | None = None


Pairs = Sequence[tuple[EngineImage, EngineImage]]
Images = Sequence[EngineImage]
ImageLists = list[list[Any]]  # per request: its prepared PIL images, in order
Seeds = Sequence[int] | None
Answers = list[list[str]]  # per request: its n answer texts


def build_messages(images_count: int, text: str) -> list[dict[str, Any]]:
    """One user turn: ``images_count`` image placeholders, then the question (HF chat format).

    The transformers engine and the trainer's dataset both use it; the processor's chat template
    turns each ``{"type": "image"}`` into ``<|vision_start|><|image_pad|><|vision_end|>``.
    """
    if images_count < 0:
        raise ValueError("images_count must be >= 0")
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(images_count)]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


class Engine(ABC):
    name: str = "engine"
    needs_pixels: bool = True

    def __init__(self, reasoning: bool = True) -> None:
        self.reasoning = reasoning
        self.stats: dict[str, float] = {"generated_tokens": 0, "seconds": 0.0, "requests": 0}

    def compare(self, pairs: Pairs, n: int, sampling: Sampling, seeds: Seeds = None) -> Answers:
        """``n`` raw answer texts per ordered pair; ``seeds``: one per pair."""
        return self._compare(pairs, n, sampling, self.request_seeds(sampling, n, len(pairs), seeds))

    def score(self, images: Images, n: int, sampling: Sampling, seeds: Seeds = None) -> Answers:
        """``n`` raw answer texts per image (temperature 0 = greedy); ``seeds``: one per image."""
        return self._score(images, n, sampling, self.request_seeds(sampling, n, len(images), seeds))

    @abstractmethod
    def _compare(self, pairs: Pairs, n: int, sampling: Sampling, seeds: list[int]) -> Answers:
        """`compare` with the requests' seeds resolved (one per pair, checked)."""

    @abstractmethod
    def _score(self, images: Images, n: int, sampling: Sampling, seeds: list[int]) -> Answers:
        """`score` with the requests' seeds resolved (one per image, checked)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model (GPU memory, worker processes)."""

    @staticmethod
    def request_seeds(
        sampling: Sampling, n: int, count: int, seeds: Sequence[int] | None
    ) -> list[int]:
        """The seed of each of ``count`` requests: ``seeds`` checked, or derived from the call's."""
        if n < 1:
            raise ValueError("n must be >= 1")
        if seeds is None:
            return [derive_seed(sampling.seed, i) for i in range(count)]
        if len(seeds) != count:
            raise ValueError(f"{len(seeds)} seeds for {count} requests")
        return [int(s) for s in seeds]

    def summary_metrics(self) -> dict[str, str | int | float]:
        """The engine's name and counters, for a stage summary (``engine: vllm``)."""
        counters = {f"engine_{k}": v for k, v in self.stats.items() if k != "seconds"}
        return {"engine": self.name, **counters}

    @property
    def tokens_per_second(self) -> float:
        seconds = self.stats.get("seconds", 0.0)
        return self.stats.get("generated_tokens", 0) / seconds if seconds > 0 else 0.0

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ChatEngine(Engine):
    """An engine that runs a VLM on chat prompts: both request kinds become one `_generate` call
    over lists of prepared images and one question (the transformers and vLLM engines)."""

    def _compare(self, pairs: Pairs, n: int, sampling: Sampling, seeds: list[int]) -> Answers:
        image_lists = [[a.image, b.image] for a, b in pairs]
        return self._checked(
            image_lists, prompts.comparison_prompt(self.reasoning), n, sampling, seeds
        )

    def _score(self, images: Images, n: int, sampling: Sampling, seeds: list[int]) -> Answers:
        image_lists = [[item.image] for item in images]
        return self._checked(
            image_lists, prompts.scoring_prompt(self.reasoning), n, sampling, seeds
        )

    def _checked(self, image_lists: ImageLists, question: str, *args: Any) -> Answers:
        if not image_lists:
            return []
        if any(img is None for images in image_lists for img in images):
            raise ValueError(f"the {self.name} engine needs the prepared images (got None)")
        return self._generate(image_lists, question, *args)

    @abstractmethod
    def _generate(
        self, image_lists: ImageLists, question: str, n: int, sampling: Sampling, seeds: list[int]
    ) -> Answers:
        """``n`` answer texts per request: its images (PIL), the question, its seed."""
