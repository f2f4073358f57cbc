"""`Probe.image_attention` on the committed weak base: where the answer position of the comparison
prompt looks (docs/self-evolution.md, "Why the comparisons do not learn")."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def probe():
    from evoquality.experiments.probe import Probe
    from evoquality.models import committed_weak_base

    return Probe(committed_weak_base())


@pytest.fixture(scope="module")
def pictures():
    from PIL import Image

    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 56)[None, :, None] * np.ones((56, 1, 3))
    return [
        Image.fromarray(np.clip(smooth + rng.normal(0, s, (56, 56, 3)), 0, 255).astype(np.uint8))
        for s in (0, 5, 10, 20, 40, 60, 80, 100)
    ]


def test_the_last_layer_reads_the_first_image_of_a_pair_and_not_the_second(probe, pictures):
    pairs = [[a, b] for a in pictures for b in pictures if a is not b]
    shares = probe.image_attention(pairs)
    assert shares.shape == (2, 2)  # 2 text layers x 2 images
    assert (shares >= 0).all() and (shares.sum(1) <= 1 + 1e-6).all()
    first, second = shares[-1]
    # measured 0.505 and 0.005 (deterministic): the scoring path's lock on the first image
    assert first > 0.3 and first > 20 * second
    single = probe.image_attention([[p] for p in pictures])
    assert single.shape == (2, 1) and single[-1, 0] > 0.3  # measured 0.705


def test_measuring_attention_leaves_the_probabilities_unchanged(probe, pictures):
    pairs = [[pictures[0], pictures[-1]], [pictures[-1], pictures[0]]]
    before = probe.digit_probs(pairs)
    probe.image_attention(pairs)
    assert probe.model.config._attn_implementation != "eager"
    assert np.array_equal(probe.digit_probs(pairs), before)
