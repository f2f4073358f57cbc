"""Pure logic of the weak-base pretraining (evoquality.pretrain): targets, selection, answers."""

import numpy as np

from evoquality.pretrain import compare_answer, noisy_targets, score_answer, select_images
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
