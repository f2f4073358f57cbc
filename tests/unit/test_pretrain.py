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
