"""`Probe.image_attention` on the committed weak base: where the answer position of the comparison
and scoring prompts looks (docs/self-evolution.md: "The weak base" for the committed v4, "Why the
comparisons do not learn" for v3)."""

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


def test_the_middle_layer_reads_the_second_image_and_a_single_image_is_barely_read(probe, pictures):
    pairs = [[a, b] for a in pictures for b in pictures if a is not b]
    shares = probe.image_attention(pairs)
    assert shares.shape == (3, 2)  # 3 text layers x 2 images
    assert (shares >= 0).all() and (shares.sum(1) <= 1 + 1e-6).all()
    # measured (deterministic): the second image takes 0.947 of the middle layer's attention, the
    # first at most 0.033 of any layer's: the first image reaches the answer through the text
    # positions after it (v3, 2 layers: the last layer read the first image, 0.505, and not the
    # second, 0.005)
    assert shares[1, 1] > 0.5 and shares[:, 0].max() < 0.1
    single = probe.image_attention([[p] for p in pictures])
    assert single.shape == (3, 1) and single.sum() < 0.1  # measured 0.038 over the 3 layers


def test_measuring_attention_leaves_the_probabilities_unchanged(probe, pictures):
    pairs = [[pictures[0], pictures[-1]], [pictures[-1], pictures[0]]]
    before = probe.digit_probs(pairs)
    probe.image_attention(pairs)
    assert probe.model.config._attn_implementation != "eager"
    assert np.array_equal(probe.digit_probs(pairs), before)
