"""vLLM offline engine (GPU pods): ``LLM.chat`` with ``SamplingParams(n=K)``.

vLLM 0.33 facts this relies on (see docs/training.md): ``llm.chat`` takes OpenAI-style content
parts and accepts ``{"type": "image_pil", "image_pil": <PIL image>}`` (not HF-style
``{"type": "image"}``); one request with ``n=K`` returns K ``outputs[i].text`` and, with automatic
prefix caching, the K samples share the prompt's KV (the image is encoded once); ``max_tokens``
defaults to 16, so it is always set. ``generation_config="vllm"`` keeps the model's
generation_config.json (Qwen's top_k=1, repetition penalty...) out of our explicit sampling.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from evoquality import prompts
from evoquality.engines.base import Engine, EngineImage, Sampling


def build_chat_request(images: list[Any], text: str) -> list[dict[str, Any]]:
    """One conversation for ``LLM.chat``: the images (in order) then the question."""
    content: list[dict[str, Any]] = [{"type": "image_pil", "image_pil": img} for img in images]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def sampling_kwargs(sampling: Sampling, n: int) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` (greedy when temperature is 0)."""
    greedy = sampling.temperature <= 0
    return {
        "n": n,
        "temperature": 0.0 if greedy else sampling.temperature,
        "top_p": 1.0 if greedy else sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "seed": sampling.seed,
    }


class VLLMEngine(Engine):
    name = "vllm"
    needs_pixels = True

    def __init__(
        self,
        model_path: str,
        min_pixels: int,
        max_pixels: int,
        reasoning: bool = True,
        dtype: str = "bfloat16",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        seed: int = 0,
        revision: str | None = None,
        prefix_caching: bool = True,
        max_model_len: int | None = None,
    ) -> None:
        import vllm  # GPU images only

        super().__init__(reasoning=reasoning)
        self._vllm = vllm
        kwargs: dict[str, Any] = {}
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(
            model=model_path,
            revision=revision,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=prefix_caching,
            dtype=dtype,
            seed=seed,
            limit_mm_per_prompt={"image": 2, "video": 0},
            mm_processor_kwargs={"min_pixels": min_pixels, "max_pixels": max_pixels},
            generation_config="vllm",
            **kwargs,
        )
        self.stats["cached_prompt_tokens"] = 0
        self.stats["prompt_tokens"] = 0

    def compare(
        self, pairs: Sequence[tuple[EngineImage, EngineImage]], n: int, sampling: Sampling
    ) -> list[list[str]]:
        question = prompts.comparison_prompt(self.reasoning)
        return self._chat([[a.image, b.image] for a, b in pairs], question, n, sampling)

    def score(self, images: Sequence[EngineImage], n: int, sampling: Sampling) -> list[list[str]]:
        question = prompts.scoring_prompt(self.reasoning)
        return self._chat([[item.image] for item in images], question, n, sampling)

    def _chat(
        self, image_lists: list[list[Any]], question: str, n: int, sampling: Sampling
    ) -> list[list[str]]:
        if not image_lists:
            return []
        if any(img is None for images in image_lists for img in images):
            raise ValueError("the vLLM engine needs the prepared images (got None)")
        params = self._vllm.SamplingParams(**sampling_kwargs(sampling, n))
        conversations = [build_chat_request(images, question) for images in image_lists]
        started = time.perf_counter()
        outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
        self.stats["seconds"] += time.perf_counter() - started
        self.stats["requests"] += len(conversations)
        texts = []
        for out in outputs:
            texts.append([sample.text for sample in out.outputs])
            self.stats["generated_tokens"] += sum(len(s.token_ids) for s in out.outputs)
            self.stats["prompt_tokens"] += len(out.prompt_token_ids or [])
            self.stats["cached_prompt_tokens"] += int(getattr(out, "num_cached_tokens", 0) or 0)
        return texts

    def close(self) -> None:
        import gc

        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
