"""Hugging Face transformers generation: the CPU engine (tests, quickstart) and a GPU fallback.

One `generate` call per engine call: every request's prompt (chat template + image placeholders),
left padding, ``num_return_sequences=n``. CUDA in bf16 when available, else CPU float32.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from evoquality import prompts
from evoquality.engines.base import Engine, EngineImage, Sampling, build_messages

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


class TransformersEngine(Engine):
    name = "transformers"
    needs_pixels = True

    def __init__(
        self,
        model_path: str,
        min_pixels: int,
        max_pixels: int,
        reasoning: bool = True,
        dtype: str = "bfloat16",
        revision: str | None = None,
        device: str | None = None,
        model: Any = None,
        processor: Any = None,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText

        from evoquality.models import load_processor

        super().__init__(reasoning=reasoning)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cpu":
            torch_dtype = torch.float32  # bf16 matmuls are slow (and lossy) on CPU
        else:
            torch_dtype = getattr(torch, _DTYPES.get(dtype, "bfloat16"))
        self.processor = processor or load_processor(model_path, min_pixels, max_pixels, revision)
        if model is None:
            model = AutoModelForImageTextToText.from_pretrained(
                model_path, revision=revision, dtype=torch_dtype
            )
            model.to(self.device)
        self.model = model.eval()
        tokenizer = self.processor.tokenizer
        self.pad_token_id = tokenizer.pad_token_id
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_token_id = eos

    # -- requests ---------------------------------------------------------------------------
    def compare(
        self, pairs: Sequence[tuple[EngineImage, EngineImage]], n: int, sampling: Sampling
    ) -> list[list[str]]:
        question = prompts.comparison_prompt(self.reasoning)
        return self._generate([[a.image, b.image] for a, b in pairs], question, n, sampling)

    def score(self, images: Sequence[EngineImage], n: int, sampling: Sampling) -> list[list[str]]:
        question = prompts.scoring_prompt(self.reasoning)
        return self._generate([[item.image] for item in images], question, n, sampling)

    def close(self) -> None:
        import gc

        import torch

        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- generation -------------------------------------------------------------------------
    def prompt_text(self, images_count: int, question: str) -> str:
        return self.processor.apply_chat_template(
            build_messages(images_count, question), tokenize=False, add_generation_prompt=True
        )

    def _generate(
        self, image_lists: list[list[Any]], question: str, n: int, sampling: Sampling
    ) -> list[list[str]]:
        import torch
        from transformers import GenerationConfig

        if n < 1:
            raise ValueError("n must be >= 1")
        if not image_lists:
            return []
        if self.model is None:
            raise RuntimeError("engine is closed")
        for images in image_lists:
            if any(img is None for img in images):
                raise ValueError("the transformers engine needs the prepared images (got None)")
        text = self.prompt_text(len(image_lists[0]), question)
        inputs = self.processor(
            text=[text] * len(image_lists),
            images=image_lists,
            return_tensors="pt",
            padding=True,
        ).to(self.device)
        greedy = sampling.temperature <= 0
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else 0,
            repetition_penalty=1.0,
            num_return_sequences=1 if greedy else n,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        torch.manual_seed(sampling.seed)
        started = time.perf_counter()
        with torch.no_grad():
            output = self.model.generate(**inputs, generation_config=config)
        elapsed = time.perf_counter() - started
        completion = output[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(completion, skip_special_tokens=True)
        self.stats["generated_tokens"] += int((completion != self.pad_token_id).sum())
        self.stats["seconds"] += elapsed
        self.stats["requests"] += len(image_lists)
        per = 1 if greedy else n
        grouped = [texts[i * per : (i + 1) * per] for i in range(len(image_lists))]
        return [group * n if greedy else group for group in grouped]
