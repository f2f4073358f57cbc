"""Deterministic perception probe of a built model: next-token probabilities on the scoring and
comparison prompts (no sampling), used by `benchmarks/weak_base.py` and the weak-base recipe check.

* SRCC of the expected first score digit: from the probabilities of ``1``..``5`` after ``\\boxed{``
  in the scoring answer (what many sampled scores average to), and its spread across images;
* comparison accuracy on 160 random pairs with different pseudo-MOS, from P(``0``) vs P(``1``)
  after ``\\boxed{``, averaged over both image orders, and the position bias (mean P(first) - 0.5);
* per distortion family, the SRCC of the expected digit within that family (plus the pristine
  scenes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import spearmanr


class Probe:
    """Next-token probabilities of a built model on the scoring and comparison prompts."""

    def __init__(self, path: Path):
        import torch
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        self.torch = torch
        self.processor = AutoProcessor.from_pretrained(path)
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
        tokenizer = self.processor.tokenizer
        self.digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]

    def digit_probs(self, images: list[list]) -> np.ndarray:
        from evoquality.pretrain import answer_prompt

        texts = [answer_prompt(self.processor, len(images[0])) + "\\boxed{"] * len(images)
        out = []
        for lo in range(0, len(texts), 32):
            inputs = self.processor(
                text=texts[lo : lo + 32],
                images=images[lo : lo + 32],
                return_tensors="pt",
                padding=True,
            )
            with self.torch.no_grad():
                logits = self.model(**inputs).logits[:, -1, :]
            out.append(self.torch.softmax(logits, -1)[:, self.digits].numpy())
        return np.concatenate(out)

    def measure(self, images: list, mos: np.ndarray, families: list[str], seed: int = 0) -> dict:
        p = self.digit_probs([[img] for img in images])[:, 1:6]
        expected = (p * np.arange(1, 6)).sum(1) / p.sum(1)
        per_family = {}
        for family in sorted(set(families) - {"pristine"}):
            rows = [i for i, f in enumerate(families) if f in (family, "pristine")]
            per_family[family] = round(float(spearmanr(expected[rows], mos[rows]).statistic), 3)
        rng = np.random.default_rng(seed)
        pairs = [tuple(rng.choice(len(images), 2, replace=False)) for _ in range(160)]
        pairs = [(a, b) for a, b in pairs if mos[a] != mos[b]]
        q = self.digit_probs(
            [[images[a], images[b]] for a, b in pairs] + [[images[b], images[a]] for a, b in pairs]
        )
        first = q[:, 0] / (q[:, 0] + q[:, 1])
        n = len(pairs)
        a_better = (first[:n] + 1 - first[n:]) / 2
        truth = np.array([mos[a] > mos[b] for a, b in pairs])
        return {
            "srcc": float(spearmanr(expected, mos).statistic),
            "spread": float(expected.std()),
            "compare_acc": float(((a_better > 0.5) == truth).mean()),
            "position_bias": float(first.mean() - 0.5),
            "per_family": per_family,
        }


def load_split(uri: str, cache: Path, size: int, limit: int | None, photos=None, seed: int = 0):
    """`pretrain.load_scenes`, at most ``limit`` images of it (a seeded random subset)."""
    from evoquality.pretrain import load_scenes

    images, mos, families = load_scenes(uri, cache, size, photos)
    if limit and len(images) > limit:
        index = np.sort(np.random.default_rng(seed).choice(len(images), limit, replace=False))
        return [images[i] for i in index], mos[index], [families[i] for i in index]
    return images, mos, families
