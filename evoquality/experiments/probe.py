"""Deterministic perception probe of a built model: next-token probabilities on the scoring and
comparison prompts (no sampling), used by `benchmarks/weak_base.py` and the weak-base recipe check.

* SRCC of the expected first score digit: from the probabilities of ``1``..``5`` after ``\\boxed{``
  in the scoring answer (what many sampled scores average to), and its spread across images;
* the expected Kendall tau of ONE sampled first digit per image (`sample_tau`), exact from the
  same probabilities: what single-sample SRCC measures, without its sampling noise, so it sees a
  sharper score distribution as well as a re-ranking;
* comparison accuracy on 160 random pairs with different pseudo-MOS, from P(``0``) vs P(``1``)
  after ``\\boxed{``, averaged over both image orders, and the position bias (mean P(first) - 0.5);
* per distortion family, the SRCC of the expected digit within that family (plus the pristine
  scenes);
* `Probe.image_attention`: per layer, the share of attention the answer position pays to each
  image's tokens: where a comparison looks (the committed base's last layer looks only at the
  first image, docs/self-evolution.md);
* `Probe.asymmetry`: comparing against scoring on the same pairs, the paper's premise: a single
  comparison vote's accuracy and the K-vote majority's (K/2 votes in each image order, exact from
  the binomials), against the pair accuracy of single sampled scores and of mean-of-n scores
  (first digits drawn from the probed distribution, seeded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.stats import binom, spearmanr


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

    def answer_inputs(self, groups: list[list]):
        """Processor inputs, 32 groups at a time, of the prompt for each group of images (the
        comparison prompt for pairs, the scoring prompt for single images) up to the answer
        position right after ``\\boxed{`` (left-padded, so that position is the last)."""
        from evoquality.pretrain import answer_prompt

        text = answer_prompt(self.processor, len(groups[0])) + "\\boxed{"
        for lo in range(0, len(groups), 32):
            chunk = groups[lo : lo + 32]
            yield self.processor(
                text=[text] * len(chunk), images=chunk, return_tensors="pt", padding=True
            )

    def digit_probs(self, images: list[list]) -> np.ndarray:
        out = []
        for inputs in self.answer_inputs(images):
            with self.torch.no_grad():
                logits = self.model(**inputs).logits[:, -1, :]
            out.append(self.torch.softmax(logits, -1)[:, self.digits].numpy())
        return np.concatenate(out)

    def image_attention(self, groups: list[list]) -> np.ndarray:
        """Mean share of attention (over heads and groups) that the answer position, right after
        ``\\boxed{``, pays to each image's tokens: an array of layers x images per group."""
        n = len(groups[0])
        config = self.model.config
        before = config._attn_implementation
        self.model.set_attn_implementation("eager")  # the only one that returns attentions
        try:
            total = 0.0
            for inputs in self.answer_inputs(groups):
                with self.torch.no_grad():
                    attentions = self.model(**inputs, output_attentions=True).attentions
                ids = inputs["input_ids"]
                slot = (ids == config.vision_start_token_id).cumsum(-1) - 1
                slot[ids != config.image_token_id] = -1
                onehot = self.torch.stack([slot == s for s in range(n)], -1).float()
                # per layer: batch x heads x keys at the last (answer) position, left-padded
                last = self.torch.stack([a[:, :, -1, :].mean(1) for a in attentions], 1)
                total = total + self.torch.einsum("blk,bks->ls", last, onehot).numpy()
        finally:
            self.model.set_attn_implementation(before)
        return total / len(groups)

    def score_probs(self, images: list) -> tuple[np.ndarray, np.ndarray]:
        """Per image, the probabilities of first score digits 1..5 on the scoring prompt and the
        expected digit."""
        p = self.digit_probs([[img] for img in images])[:, 1:6]
        return p, (p * np.arange(1, 6)).sum(1) / p.sum(1)

    def measure(self, images: list, mos: np.ndarray, families: list[str], seed: int = 0) -> dict:
        p, expected = self.score_probs(images)
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
            "sample_tau": sample_tau(p, np.asarray(mos, dtype=np.float64)),
            "spread": float(expected.std()),
            "compare_acc": float(((a_better > 0.5) == truth).mean()),
            "position_bias": float(first.mean() - 0.5),
            "per_family": per_family,
        }

    def asymmetry(
        self, images: list, mos: np.ndarray, pairs: int = 1000, k: int = 8, n: int = 16, seed=0
    ) -> dict:
        """Comparison against scoring on the same random pairs of different pseudo-MOS."""
        rng = np.random.default_rng(seed)
        drawn = [tuple(rng.choice(len(images), 2, replace=False)) for _ in range(pairs)]
        drawn = [(a, b) for a, b in drawn if mos[a] != mos[b]]
        a, b = np.array(drawn).T
        truth = mos[a] > mos[b]
        q = self.digit_probs(
            [[images[i], images[j]] for i, j in drawn] + [[images[j], images[i]] for i, j in drawn]
        )
        first = q[:, 0] / (q[:, 0] + q[:, 1])
        a_first, a_second = first[: len(drawn)], 1 - first[len(drawn) :]  # P(a named better)
        right_first = np.where(truth, a_first, 1 - a_first)
        right_second = np.where(truth, a_second, 1 - a_second)
        p, expected = self.score_probs(images)
        digits = sampled_digits(p, n, rng).astype(np.float64)
        sign = np.where(truth, 1.0, -1.0)[:, None]
        single = np.sign((digits[a] - digits[b]) * sign)  # per sample: +1 right, 0 tie, -1 wrong
        mean_n = np.sign((digits[a].mean(1) - digits[b].mean(1)) * sign[:, 0])
        return {
            "pairs": len(drawn),
            "vote_acc": float(((right_first + right_second) / 2).mean()),
            "majority_acc": float(majority_accuracy(right_first, right_second, k).mean()),
            "score_pair_acc": float((single.mean() + 1) / 2),
            "mean_score_pair_acc": float((mean_n.mean() + 1) / 2),
            "expected_pair_acc": float(
                ((np.sign((expected[a] - expected[b]) * sign[:, 0])).mean() + 1) / 2
            ),
            "srcc1": float(np.mean([spearmanr(digits[:, s], mos).statistic for s in range(n)])),
            "srcc_mean": float(spearmanr(digits.mean(1), mos).statistic),
            "expected_srcc": float(spearmanr(expected, mos).statistic),
            "position_bias": float(first.mean() - 0.5),
        }


def sample_tau(p: np.ndarray, mos: np.ndarray) -> float:
    """Expected Kendall tau-a between ``mos`` and one first digit drawn per image from ``p``
    (n_images x 5, digits 1..5): over pairs of different MOS, P(concordant) - P(discordant),
    ties of the digits counting 0."""
    p = p / p.sum(1, keepdims=True)
    above = np.tril(np.ones((p.shape[1], p.shape[1])), -1)  # above[i, j] = 1 where digit i > j
    greater = p @ above @ p.T  # greater[a, b] = P(digit of a > digit of b)
    sign = np.sign(mos[:, None] - mos[None, :])
    return float((sign * (greater - greater.T)).sum() / np.count_nonzero(sign))


def majority_accuracy(correct_first: np.ndarray, correct_second: np.ndarray, k: int) -> np.ndarray:
    """P(the majority of k votes is right), ties counted half, per pair: k/2 votes in each image
    order, each vote right with probability ``correct_first`` / ``correct_second``."""
    half = np.arange(k // 2 + 1)
    first = binom.pmf(half[None, :], k // 2, correct_first[:, None])
    second = binom.pmf(half[None, :], k // 2, correct_second[:, None])
    right = np.stack([np.convolve(f, g) for f, g in zip(first, second, strict=True)])
    totals = np.arange(right.shape[1])
    return right[:, totals > k // 2].sum(1) + 0.5 * right[:, totals == k // 2].sum(1)


def sampled_digits(p: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n first score digits (1..5) per image drawn from its probed distribution ``p``."""
    cumulative = np.cumsum(p / p.sum(1, keepdims=True), axis=1)
    draws = rng.random((len(p), n, 1))
    return 1 + (draws > cumulative[:, None, :-1]).sum(-1)


def load_split(uri: str, cache: Path, size: int, limit: int | None, photos=None, seed: int = 0):
    """`pretrain.load_scenes`, at most ``limit`` images of it (a seeded random subset)."""
    from evoquality.pretrain import load_scenes

    images, mos, families = load_scenes(uri, cache, size, photos)
    if limit and len(images) > limit:
        index = np.sort(np.random.default_rng(seed).choice(len(images), limit, replace=False))
        return [images[i] for i in index], mos[index], [families[i] for i in index]
    return images, mos, families
