"""Random test images for the vLLM tests: noise pictures prepared like the stages prepare them."""

from __future__ import annotations

import numpy as np
from PIL import Image

from evoquality.data.images import prepare_image
from evoquality.engines import EngineImage


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def prepared(count: int, side: int = 56, seed: int = 0) -> list[EngineImage]:
    """``count`` images of about ``side`` x ``side`` pixels (sides multiples of 28)."""
    cap = side * side
    return [
        EngineImage(f"img{seed}-{i}", prepare_image(noise(side, side, seed * 1000 + i), 784, cap))
        for i in range(count)
    ]


def pairs_of(images: list[EngineImage]) -> list[tuple[EngineImage, EngineImage]]:
    return [(images[i], images[i + 1]) for i in range(0, len(images) - 1, 2)]
