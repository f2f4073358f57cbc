"""GRPO rewards: the fidelity reward against pseudo-labels, the format reward, confidence weights.

Fidelity reward (VisualQuality-R1's form with pseudo-labels p*): for image i with sampled scores
q_i1..q_iG (mean m_i, unbiased variance v_i over its VALID samples) and each partner j with a label,
``p_k = Phi((q_ik - m_j) / sqrt(v_i + v_j + eps))`` and
``r_ik = mean_j [sqrt(p*_ij p_k) + sqrt((1 - p*_ij)(1 - p_k))]``, always in [0, 1].

Rules for missing data: an unparseable sample (NaN) gets reward 0 and is left out of m_i and v_i;
an image with exactly one valid sample uses v_i = 0; a partner counts only with a label and at
least 2 valid samples; an image without such a partner gets reward 0 for every sample.
"""

from __future__ import annotations

import re

import numpy as np
from scipy.special import ndtr

from evoquality.prompts import parse_score

SCALE_MODES = ("group", "batch", "none")
_STD_EPS = 1e-4  # TRL's epsilon in advantages / (std + 1e-4)
_THINK_THEN_ANSWER = re.compile(r"^\s*<think>.+?</think>(.*)$", re.DOTALL)


def fidelity_rewards(scores: np.ndarray, pref: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Rewards (n_images, G) of the sampled ``scores`` (NaN = unparseable) against ``pref``.

    ``pref[i, j]`` = p*_ij = probability that i is better than j, NaN where there is no label.
    """
    scores = np.asarray(scores, dtype=np.float64)
    pref = np.asarray(pref, dtype=np.float64)
    n_images = scores.shape[0]
    if scores.ndim != 2 or pref.shape != (n_images, n_images):
        raise ValueError(f"need scores (n, G) and pref (n, n), got {scores.shape}, {pref.shape}")
    labelled = np.isfinite(pref) & ~np.eye(n_images, dtype=bool)
    if np.any((pref[labelled] < 0) | (pref[labelled] > 1)):
        raise ValueError("pref values must be probabilities in [0, 1] (or NaN for no label)")
    valid = np.isfinite(scores)
    n_valid = valid.sum(axis=1)
    filled = np.where(valid, scores, 0.0)
    mean = filled.sum(axis=1) / np.maximum(n_valid, 1)
    sq_dev = np.where(valid, (scores - mean[:, None]) ** 2, 0.0).sum(axis=1)
    var = sq_dev / np.maximum(n_valid - 1, 1)  # 0 with a single valid sample

    partner = labelled & (n_valid >= 2)[None, :]  # (i, j)
    label = np.where(partner, pref, 0.0)[:, None, :]  # (i, 1, j)
    z = (filled[:, :, None] - mean[None, None, :]) / np.sqrt(
        var[:, None, None] + var[None, None, :] + eps
    )
    p = ndtr(z)  # (i, k, j): probability that sample k of i beats partner j
    fidelity = np.sqrt(label * p) + np.sqrt((1.0 - label) * (1.0 - p))
    n_partners = partner.sum(axis=1)
    total = np.where(partner[:, None, :], fidelity, 0.0).sum(axis=2)
    rewards = total / np.maximum(n_partners, 1)[:, None]
    return np.where(valid & (n_partners > 0)[:, None], rewards, 0.0)


def format_rewards(texts: list[str], reasoning: bool) -> np.ndarray:
    """1.0 per completion that follows the answer format, else 0.0.

    With reasoning: ``<think>...</think>`` first, then a parseable ``\\boxed{score}``; without: a
    parseable ``\\boxed{score}``.
    """
    return np.array([float(_follows_format(text, reasoning)) for text in texts])


def _follows_format(text: str, reasoning: bool) -> bool:
    if reasoning:
        match = _THINK_THEN_ANSWER.match(text)
        if match is None:
            return False
        text = match.group(1)
    return "\\boxed{" in text and parse_score(text) is not None


def weight_rewards(rewards: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Multiply each image's rewards (n_images, G) by its confidence weight (n_images,).

    A constant factor per image cancels in a per-group z-score (TRL ``scale_rewards="group"``,
    up to TRL's 1e-4 epsilon): weights only change GRPO's update with ``"batch"`` or ``"none"``.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if rewards.ndim != 2 or weights.shape != (rewards.shape[0],):
        raise ValueError(
            f"need rewards (n, G) and weights (n,), got {rewards.shape}, {weights.shape}"
        )
    return rewards * weights[:, None]


def group_advantages(rewards: np.ndarray, scale: str) -> np.ndarray:
    """TRL 1.16's GRPO advantages of rewards (n_images, G), one group per image.

    reward - group mean, divided by (std + 1e-4) with the group's std (``"group"``), the whole
    batch's std (``"batch"``) or not at all (``"none"``); NaN-aware, Bessel-corrected like TRL.
    """
    if scale not in SCALE_MODES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {SCALE_MODES}")
    rewards = np.asarray(rewards, dtype=np.float64)
    advantages = rewards - np.nanmean(rewards, axis=1, keepdims=True)
    if scale == "group":
        return advantages / (np.nanstd(rewards, axis=1, ddof=1, keepdims=True) + _STD_EPS)
    if scale == "batch":
        return advantages / (np.nanstd(rewards, ddof=1) + _STD_EPS)
    return advantages
