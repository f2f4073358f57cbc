"""The TRL reward function: fidelity of sampled scores to the pseudo-labels, within one call.

TRL calls a reward function with every dataset column as a keyword argument (one entry per
completion, i.e. each row repeated G times). Within a call the completions are grouped by image,
parsed with `prompts.parse_score` (unparseable = NaN -> reward 0), the preference matrix is built
from the pair labels (``p_star`` of each row against its ``partner_key``; in Bradley-Terry mode any
two images of the call: ``sigmoid(bt_i - bt_j)``), and `reward.fidelity_rewards` gives each
sample's reward. Confidence weights multiply an image's rewards when enabled; the format reward is
added with its weight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.special import expit

from evoquality import prompts, reward


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        content = completion[-1].get("content", "")
        if isinstance(content, list):
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content)
    return ""


def pair_rewards(
    texts: list[str],
    image_key: list[str],
    partner_key: list[str],
    p_star: list[float],
    weight: list[float] | None = None,
    bt_score: list[float | None] | None = None,
    *,
    labels: str = "hard",
    confidence_weighting: bool = False,
    format_weight: float = 0.0,
    reasoning: bool = True,
) -> tuple[np.ndarray, dict[str, float]]:
    """Rewards, one per completion (same order), and a few scalars for logging."""
    n = len(texts)
    if not (len(image_key) == len(partner_key) == len(p_star) == n):
        raise ValueError(
            "texts, image_key, partner_key and p_star must have one entry per completion"
        )
    images: dict[str, int] = {}
    slots: list[tuple[int, int]] = []  # (image index, sample index) per completion
    counts: list[int] = []
    for key in image_key:
        idx = images.setdefault(key, len(images))
        if idx == len(counts):
            counts.append(0)
        slots.append((idx, counts[idx]))
        counts[idx] += 1
    n_images, width = len(images), max(counts)
    scores = np.full((n_images, width), np.nan)
    parsed = [prompts.parse_score(t) for t in texts]
    for (i, k), value in zip(slots, parsed, strict=True):
        if value is not None:
            scores[i, k] = value

    pref = np.full((n_images, n_images), np.nan)
    first_row = {}
    for row, key in enumerate(image_key):
        first_row.setdefault(key, row)
    if labels == "bradley-terry" and bt_score is not None:
        bt = np.full(n_images, np.nan)
        for key, row in first_row.items():
            if bt_score[row] is not None and np.isfinite(bt_score[row]):
                bt[images[key]] = float(bt_score[row])
        pref = expit(bt[:, None] - bt[None, :])  # NaN where a score is missing
        np.fill_diagonal(pref, np.nan)
    else:
        for key, row in first_row.items():
            partner = partner_key[row]
            if partner in images and partner != key:
                i, j = images[key], images[partner]
                pref[i, j] = float(p_star[row])
                if np.isnan(pref[j, i]):
                    pref[j, i] = 1.0 - float(p_star[row])

    fidelity = reward.fidelity_rewards(scores, pref)
    if confidence_weighting and weight is not None:
        w = np.ones(n_images)
        for key, row in first_row.items():
            w[images[key]] = float(weight[row])
        fidelity = reward.weight_rewards(fidelity, w)
    fidelity = np.where(np.isfinite(scores), fidelity, 0.0)
    out = np.array([fidelity[i, k] for i, k in slots], dtype=np.float64)
    if format_weight:
        out = out + format_weight * reward.format_rewards(texts, reasoning)
    parse_rate = float(np.mean([v is not None for v in parsed])) if n else 0.0
    return out, {"parse_rate": parse_rate, "fidelity": float(out.mean()) if n else 0.0}


def make_reward_function(spec) -> Callable[..., list[float]]:
    """The reward function for `GRPOTrainer(reward_funcs=[...])`, configured from the run spec."""
    labels = spec.ranking.labels
    confidence_weighting = spec.ranking.confidence_weighting
    format_weight = spec.training.format_reward_weight
    reasoning = spec.model.reasoning

    def evoquality_fidelity(
        prompts: list[Any],
        completions: list[Any],
        image_key: list[str],
        partner_key: list[str],
        p_star: list[float],
        weight: list[float] | None = None,
        bt_score: list[float | None] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        texts = [completion_text(c) for c in completions]
        rewards, metrics = pair_rewards(
            texts,
            image_key,
            partner_key,
            p_star,
            weight,
            bt_score,
            labels=labels,
            confidence_weighting=confidence_weighting,
            format_weight=format_weight,
            reasoning=reasoning,
        )
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            log_metric("score_parse_rate", metrics["parse_rate"])
        return [float(r) for r in rewards]

    return evoquality_fidelity
