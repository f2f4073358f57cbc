"""Pure logic of the weak-base pretraining (evoquality.pretrain): targets, selection, answers,
the examples of a batch."""

import dataclasses

import numpy as np
import pytest

from evoquality.pretrain import (
    PretrainSettings,
    batch_examples,
    brightness_biased,
    compare_answer,
    noisy_targets,
    score_answer,
    select_images,
)
from evoquality.prompts import parse_choice, parse_score


def test_noisy_targets_are_deterministic_clipped_and_rounded():
    mos = np.array([1.0, 2.5, 5.0, 3.3])
    a = noisy_targets(mos, 1.0, np.random.default_rng(3))
    b = noisy_targets(mos, 1.0, np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert a.min() >= 1.0 and a.max() <= 5.0
    assert np.allclose(a, np.round(a, 2))
    assert np.array_equal(noisy_targets(mos, 0.0, np.random.default_rng(0)), mos)


def test_noise_weakens_but_keeps_the_order_on_average():
    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, size=2000)
    from scipy.stats import spearmanr

    weak = spearmanr(noisy_targets(mos, 1.0, rng), mos).statistic
    assert 0.5 < weak < 0.95


def test_select_images_keeps_pristine_and_chosen_families():
    dist = ["pristine", "jpeg", "gaussian_blur", "jpeg", "darken"]
    assert select_images(dist, None).tolist() == [0, 1, 2, 3, 4]
    assert select_images(dist, ("jpeg",)).tolist() == [0, 1, 3]


def test_answers_parse_back():
    assert score_answer(3.456) == "\\boxed{3.46}"
    assert parse_score(score_answer(7.0)) == 5.0
    assert parse_score(score_answer(0.2)) == 1.0
    rng = np.random.default_rng(0)
    assert parse_choice(compare_answer(4.0, 2.0, rng)) == 0
    assert parse_choice(compare_answer(2.0, 4.0, rng)) == 1
    assert {parse_choice(compare_answer(3.0, 3.0, rng)) for _ in range(50)} == {0, 1}


def _batches(settings, targets, n=200):
    rng = np.random.default_rng(5)
    return [ex for _ in range(n) for ex in batch_examples(targets, settings, rng)]


def test_noisy_scores_leave_comparisons_clean_and_both_orders_agree():
    targets = np.linspace(1.0, 5.0, 40)
    settings = dataclasses.replace(
        PretrainSettings(), compare_share=0.5, compare_both_orders=True, score_noise=1.0
    )
    examples = _batches(settings, targets)
    assert all(len(b) == settings.batch_size for b in [examples[:8], examples[8:16]])
    scoring = [ex for ex in examples if len(ex.images) == 1]
    errors = np.array([parse_score(ex.answer) - targets[ex.images[0]] for ex in scoring])
    inside = np.array([1.5 < targets[ex.images[0]] < 4.5 for ex in scoring])
    assert 0.7 < errors[inside].std() < 1.2  # fresh noise of sd 1 (clipping aside)
    pairs = [ex for ex in examples if len(ex.images) == 2]
    assert 0.6 < len(pairs) / len(examples) < 0.72  # half the draws, two examples each: 2/3
    for ex in pairs:  # distinct targets here: every comparison answer is the clean order
        a, b = ex.images
        assert parse_choice(ex.answer) == (0 if targets[a] > targets[b] else 1)
    swapped = {ex.images for ex in pairs}
    assert sum((b, a) in swapped for a, b in swapped) >= 0.9 * len(swapped)


def test_default_batches_score_clean_targets_in_one_order():
    targets = np.linspace(1.0, 5.0, 2000)  # many images: a pair drawn twice is rare
    examples = _batches(PretrainSettings(), targets)
    for ex in examples:
        if len(ex.images) == 1:
            assert parse_score(ex.answer) == round(targets[ex.images[0]], 2)
    pairs = [ex.images for ex in examples if len(ex.images) == 2]
    assert 0.1 < len(pairs) / len(examples) < 0.3
    assert sum((b, a) in set(pairs) for a, b in pairs) < 0.1 * len(pairs)


def test_brightness_bias_moves_scores_only():
    from PIL import Image

    greys = [20, 60, 100, 140, 180, 220] * 5
    images = [Image.new("RGB", (8, 8), (g, g, g)) for g in greys]
    targets = np.full(len(images), 3.0)
    assert brightness_biased(targets, images, 0.0) is targets
    biased = brightness_biased(targets, images, 0.5)
    assert abs(biased.mean() - 3.0) < 1e-12
    assert abs(biased.std() - 0.5) < 1e-9  # half a standard deviation per sd of brightness
    assert np.all(np.diff(biased[:6]) > 0)  # brighter scores higher
    settings = dataclasses.replace(PretrainSettings(), compare_share=0.5, compare_both_orders=True)
    rng = np.random.default_rng(5)
    clean = np.linspace(1.5, 4.5, len(images))  # the pairs' order, against the bias's order
    scores = clean + biased - 3.0
    examples = [ex for _ in range(100) for ex in batch_examples(clean, settings, rng, scores)]
    assert {len(ex.images) for ex in examples} == {1, 2}
    for ex in examples:
        if len(ex.images) == 1:
            assert ex.answer == score_answer(scores[ex.images[0]])
        else:
            a, b = ex.images
            assert parse_choice(ex.answer) == (0 if clean[a] > clean[b] else 1)


def test_frequency_filter_bank_separates_brightness_colour_and_frequency():
    from evoquality.tiny_model import frequency_filter_bank

    bank = frequency_filter_bank(32, 14, 2, seed=0)
    assert bank.shape == (32, 3, 2, 14, 14) and bank.dtype == np.float32
    flat = bank.reshape(32, -1).astype(np.float64)
    assert np.allclose(np.linalg.norm(flat, axis=1), 1.0, atol=1e-5)

    def response(patch: np.ndarray) -> np.ndarray:  # patch: (3, 14, 14), same in both frames
        return flat @ np.stack([patch, patch], axis=1).ravel()

    flat_grey = response(np.full((3, 14, 14), 0.7))
    assert abs(flat_grey[0]) > 1 and np.allclose(flat_grey[1:], 0, atol=1e-5)
    tinted = response(np.stack([np.full((14, 14), v) for v in (0.9, 0.2, 0.2)]))
    assert abs(tinted[1]) > 0.5
    rng = np.random.default_rng(0)
    smooth = np.tile(np.linspace(0, 1, 14), (3, 14, 1))
    noisy = smooth + rng.normal(0, 0.3, smooth.shape)
    # Channels 3.. cycle over 6 bands, coarse to fine: a ramp's energy sits in the coarsest band,
    # noise adds energy to the finest.
    coarse, fine = slice(3, 32, 6), slice(8, 32, 6)
    ramp, speckled = response(smooth), response(noisy)
    assert (ramp[coarse] ** 2).sum() > 100 * (ramp[fine] ** 2).sum()
    assert (speckled[fine] ** 2).sum() > 100 * (ramp[fine] ** 2).sum()
    assert np.array_equal(bank, frequency_filter_bank(32, 14, 2, seed=0))


def _lrs_over_the_steps(settings):
    import torch

    from evoquality.pretrain import _schedule

    tower, rest = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    lr = settings.learning_rate
    groups = [{"params": [rest], "lr": lr}, {"params": [tower], "lr": lr * 0.2}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = _schedule(optimizer, settings)
    seen = []
    for _ in range(settings.steps):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        if scheduler:
            scheduler.step()
    return np.array(seen)


def test_cosine_schedule_warms_up_peaks_and_decays_every_group_alike():
    from evoquality.pretrain import COSINE_WARMUP_SHARE

    settings = PretrainSettings(steps=400, answer_lr_schedule="cosine")
    lrs = _lrs_over_the_steps(settings)
    warmup = round(COSINE_WARMUP_SHARE * settings.steps)
    assert lrs[0, 0] == 0.0
    assert np.all(np.diff(lrs[: warmup + 1, 0]) > 0)  # the warm-up rises
    assert lrs[warmup, 0] == pytest.approx(settings.learning_rate)  # to the full rate
    assert np.all(np.diff(lrs[warmup:, 0]) < 0)  # then only falls
    assert lrs[-1, 0] < 1e-3 * settings.learning_rate  # almost to 0
    assert np.allclose(lrs[:, 1], 0.2 * lrs[:, 0])  # the tower keeps its factor throughout


def test_constant_schedule_keeps_the_rate_and_unknown_ones_are_refused():
    lrs = _lrs_over_the_steps(PretrainSettings(steps=50))
    assert np.all(lrs[:, 0] == PretrainSettings().learning_rate)
    with pytest.raises(ValueError, match="answer_lr_schedule"):
        _lrs_over_the_steps(PretrainSettings(steps=5, answer_lr_schedule="linear"))
