"""KADID-style synthetic distortions (numpy, scipy, scikit-image, PIL), deterministic with a seed.

Every distortion maps a float RGB array in [0, 1] (H x W x 3), a level 1..5 and a numpy Generator to
a distorted array; quality falls with the level (a full-reference metric such as PSNR drops
monotonically). `augment_variants` draws the synthetic variants of one image that round 2 pairs.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import gaussian

LEVELS = 5
Distortion = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _param(values: tuple[float, ...], level: int) -> float:
    if not 1 <= level <= LEVELS:
        raise ValueError(f"distortion level must be 1..{LEVELS}, got {level}")
    return values[level - 1]


def gaussian_blur(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    sigma = _param((0.5, 1.0, 1.6, 2.4, 3.5), level)
    return gaussian(img, sigma=sigma, channel_axis=-1, preserve_range=True)


def motion_blur(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    length = int(_param((3, 5, 9, 13, 19), level))
    return ndimage.uniform_filter1d(img, size=length, axis=1, mode="reflect")


def gaussian_noise(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    std = _param((0.02, 0.04, 0.07, 0.11, 0.16), level)
    return img + rng.normal(0.0, std, size=img.shape)


def jpeg(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    quality = int(_param((40, 20, 10, 5, 2), level))
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img)).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64) / 255.0


def contrast_decrease(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    keep = _param((0.8, 0.62, 0.46, 0.32, 0.2), level)
    mean = img.mean(axis=(0, 1), keepdims=True)
    return mean + keep * (img - mean)


def pixelate(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    block = int(_param((2, 3, 4, 6, 8), level))
    h, w = img.shape[:2]
    small = Image.fromarray(to_uint8(img)).resize(
        (max(1, w // block), max(1, h // block)), Image.Resampling.BOX
    )
    return np.asarray(small.resize((w, h), Image.Resampling.NEAREST), dtype=np.float64) / 255.0


def color_saturation(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Desaturation: blend towards the luma image."""
    keep = _param((0.7, 0.5, 0.3, 0.15, 0.0), level)
    luma = img @ np.array([0.299, 0.587, 0.114])
    return luma[..., None] + keep * (img - luma[..., None])


def darken(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    gamma = _param((1.3, 1.7, 2.2, 2.8, 3.6), level)
    return np.clip(img, 0.0, 1.0) ** gamma


DISTORTIONS: dict[str, Distortion] = {
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "gaussian_noise": gaussian_noise,
    "jpeg": jpeg,
    "contrast_decrease": contrast_decrease,
    "pixelate": pixelate,
    "color_saturation": color_saturation,
    "darken": darken,
}
COLOR_ONLY = frozenset({"color_saturation"})  # no effect on a grey image


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def distort(img: Image.Image, name: str, level: int, seed: int) -> Image.Image:
    """Apply distortion `name` at `level` (1..5); the same inputs always give the same pixels."""
    if name not in DISTORTIONS:
        raise ValueError(f"unknown distortion {name!r}; known: {', '.join(DISTORTIONS)}")
    array = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    out = DISTORTIONS[name](array, level, np.random.default_rng(seed))
    return Image.fromarray(to_uint8(out))


def augment_variants(img: Image.Image, n: int, seed: int) -> list[tuple[str, int, Image.Image]]:
    """`n` distinct (distortion, level) variants of one image, drawn with `seed`."""
    combos = [(name, level) for name in DISTORTIONS for level in range(1, LEVELS + 1)]
    if not 0 <= n <= len(combos):
        raise ValueError(f"n must be 0..{len(combos)} (distinct distortion/level pairs), got {n}")
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(combos), size=n, replace=False)
    seeds = rng.integers(0, 2**32, size=n)
    return [
        (combos[i][0], combos[i][1], distort(img, combos[i][0], combos[i][1], int(s)))
        for i, s in zip(picks, seeds, strict=True)
    ]
