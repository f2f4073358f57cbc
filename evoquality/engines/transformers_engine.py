"""Hugging Face transformers generation: the CPU engine (tests, quickstart) and a GPU fallback.

One `generate` call per request (its prompt, chat template + image placeholders, repeated ``n``
times), seeded with the request's seed just before: a request's samples never depend on the other
requests of its call (no shared random stream, no padding to a neighbour's length, the same tensor
shapes whatever the batch), so votes are identical for any batch size and sharding. Memory stays
at one request's ``n`` sequences. CUDA in bf16 when available, else CPU float32.
"""

from __future__ import annotations

import time
from typing import Any

from evoquality.engines.base import Answers, ChatEngine, ImageLists, Sampling, build_messages

_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


class TransformersEngine(ChatEngine):
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

    def inputs(self, images: list[Any], question: str) -> Any:
        """The processor's tensors of one request (its token ids, pixels and image grid)."""
        if any(img is None for img in images):
            raise ValueError("the transformers engine needs the prepared images (got None)")
        text = self.prompt_text(len(images), question)
        return self.processor(text=[text], images=[images], return_tensors="pt")

    def _generate(
        self, image_lists: ImageLists, question: str, n: int, sampling: Sampling, seeds: list[int]
    ) -> Answers:
        import torch
        from transformers import GenerationConfig

        if self.model is None:
            raise RuntimeError("engine is closed")
        per = 1 if sampling.greedy else n
        config = GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not sampling.greedy,
            temperature=None if sampling.greedy else sampling.temperature,
            top_p=None if sampling.greedy else sampling.top_p,
            top_k=None if sampling.greedy else 0,
            repetition_penalty=1.0,
            num_return_sequences=per,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        out: list[list[str]] = []
        for images, seed in zip(image_lists, seeds, strict=True):
            inputs = self.inputs(images, question).to(self.device)
            torch.manual_seed(seed)
            started = time.perf_counter()
            with torch.no_grad():
                output = self.model.generate(**inputs, generation_config=config)
            self.stats["seconds"] += time.perf_counter() - started
            completion = output[:, inputs["input_ids"].shape[1] :]
            texts = self.processor.batch_decode(completion, skip_special_tokens=True)
            self.stats["generated_tokens"] += int((completion != self.pad_token_id).sum())
            self.stats["requests"] += 1
            out.append(texts * n if sampling.greedy else texts)
        return out
