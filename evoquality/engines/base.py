"""The inference engine interface shared by voting and evaluation.

An engine answers two kinds of request, each sampled ``n`` times:

* ``compare``: an ORDERED pair of images (``pair[0]`` is shown first) with
  ``prompts.comparison_prompt(reasoning)``;
* ``score``: one image with ``prompts.scoring_prompt(reasoning)``.

It returns the raw answer texts; parsing (``prompts.parse_choice`` / ``parse_score``) is the
caller's.
Images arrive already prepared (``evoquality.data.images.prepare_image``: both sides multiples of 28
within the pixel caps) so every engine and the trainer see the same pixels and the same token grid.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from evoquality.spec import ModelSpec


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int


@dataclass(frozen=True)
class EngineImage:
    key: str
    image: Image.Image | None
    truth: float | None = None


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

    @abstractmethod
    def compare(
        self, pairs: Sequence[tuple[EngineImage, EngineImage]], n: int, sampling: Sampling
    ) -> list[list[str]]:
        """``n`` raw answer texts per ordered pair."""

    @abstractmethod
    def score(self, images: Sequence[EngineImage], n: int, sampling: Sampling) -> list[list[str]]:
        """``n`` raw answer texts per image (temperature 0 = greedy)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model (GPU memory, worker processes)."""

    @property
    def tokens_per_second(self) -> float:
        seconds = self.stats.get("seconds", 0.0)
        return self.stats.get("generated_tokens", 0) / seconds if seconds > 0 else 0.0

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_engine(model_spec: ModelSpec, model_path: str, seed: int = 0, **kwargs: Any) -> Engine:
    """The engine named by ``model_spec.engine`` (vllm is imported only when chosen).

    Extra keyword arguments go to the vLLM engine (e.g. ``prefix_caching``).
    """
    if model_spec.engine == "simulated":
        from evoquality.engines.simulated import SimulatedEngine

        if model_spec.simulated is None:
            raise ValueError("model.engine 'simulated' needs model.simulated settings")
        return SimulatedEngine(model_spec.simulated, seed=seed, reasoning=model_spec.reasoning)
    if model_spec.engine == "transformers":
        from evoquality.engines.transformers_engine import TransformersEngine

        return TransformersEngine(
            model_path,
            min_pixels=model_spec.min_pixels,
            max_pixels=model_spec.max_pixels,
            reasoning=model_spec.reasoning,
            dtype=model_spec.dtype,
            revision=model_spec.revision,
        )
    if model_spec.engine == "vllm":
        from evoquality.engines.vllm_engine import VLLMEngine

        return VLLMEngine(
            model_path,
            min_pixels=model_spec.min_pixels,
            max_pixels=model_spec.max_pixels,
            reasoning=model_spec.reasoning,
            dtype=model_spec.dtype,
            tensor_parallel_size=model_spec.tensor_parallel,
            gpu_memory_utilization=model_spec.gpu_memory_utilization,
            seed=seed,
            revision=model_spec.revision,
            **kwargs,
        )
    raise ValueError(f"unknown engine {model_spec.engine!r}")
