"""Image loading and the one image preparation shared by every engine and the trainer.

`prepare_image` resizes an image once so that both sides are multiples of 28 (patch 14 x merge 2)
and its area lies within [min_pixels, max_pixels], following Qwen2-VL's `smart_resize` rule. The
Hugging Face processor and vLLM then see exactly the same grid: their own resize is the identity.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageOps

from evoquality.storage import Store, StoreError, open_store, split_uri

MAX_ASPECT_RATIO = 200  # Qwen2-VL's processors refuse images with a longer side ratio


class ImageError(ValueError):
    """An image is missing, unreadable or corrupt; the message names it."""


def load_image(uri_or_path: str, store_factory: Callable[[str], Store] = open_store) -> Image.Image:
    """Load an image (local path, file:// or s3://) as RGB, with its EXIF orientation applied."""
    try:
        parent, name = split_uri(uri_or_path)
        data = store_factory(parent).get_bytes(name)
    except StoreError as err:
        raise ImageError(f"cannot read image {uri_or_path}: {err}") from None
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot decode image {uri_or_path}: {err}") from None


def load_images(
    uris: list[str], store_factory: Callable[[str], Store] = open_store
) -> tuple[list[Image.Image | None], list[str]]:
    """Load many images; unreadable ones become None and their error messages are returned too."""
    cached_factory = functools.lru_cache(maxsize=None)(store_factory)  # one client per folder
    images: list[Image.Image | None] = []
    failures: list[str] = []
    for uri in uris:
        try:
            images.append(load_image(uri, cached_factory))
        except ImageError as err:
            images.append(None)
            failures.append(str(err))
    return images, failures


def _check_limits(min_pixels: int, max_pixels: int, factor: int) -> None:
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if max_pixels < factor * factor:
        raise ValueError(f"max_pixels={max_pixels} is below one {factor}x{factor} cell")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels={min_pixels} exceeds max_pixels={max_pixels}")


def _qwen_smart_resize(
    height: int, width: int, min_pixels: int, max_pixels: int, factor: int
) -> tuple[int, int]:
    """Qwen2-VL's smart_resize (as in transformers), without its aspect-ratio check."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _nearest_aspect_grid(
    height: int, width: int, min_pixels: int, max_pixels: int, factor: int
) -> tuple[int, int]:
    """The largest grid within the caps (aspect <= MAX_ASPECT_RATIO) closest to the aspect."""
    max_cells = max_pixels // (factor * factor)
    min_cells = -(-min_pixels // (factor * factor))
    rows = np.arange(1, max_cells + 1)
    lo = np.maximum(np.maximum(-(-min_cells // rows), 1), -(-rows // MAX_ASPECT_RATIO))
    hi = np.minimum(max_cells // rows, rows * MAX_ASPECT_RATIO)
    cols = np.clip(np.round(rows * width / height), lo, hi)
    ok = lo <= hi
    if not ok.any():
        raise ValueError(
            f"no grid of {factor}-pixel cells has an area within [{min_pixels}, {max_pixels}]"
        )
    rows, cols = rows[ok], cols[ok]
    error = np.abs(np.log(cols / rows * height / width))
    best = np.lexsort((-(rows * cols), np.round(error, 9)))[0]
    return int(rows[best]) * factor, int(cols[best]) * factor


def target_size(
    height: int, width: int, min_pixels: int, max_pixels: int, factor: int = 28
) -> tuple[int, int]:
    """(height, width): multiples of `factor`, area within [min_pixels, max_pixels].

    The Qwen2-VL rule when its result meets the caps (the usual case); for extreme aspect ratios
    or tight caps, the grid within the caps whose aspect is closest to the image's.
    """
    _check_limits(min_pixels, max_pixels, factor)
    if height < 1 or width < 1:
        raise ValueError(f"image size {width}x{height} is empty")
    h, w = _qwen_smart_resize(height, width, min_pixels, max_pixels, factor)
    if min_pixels <= h * w <= max_pixels and max(h, w) / min(h, w) <= MAX_ASPECT_RATIO:
        return h, w
    return _nearest_aspect_grid(height, width, min_pixels, max_pixels, factor)


def prepare_image(
    img: Image.Image, min_pixels: int, max_pixels: int, factor: int = 28
) -> Image.Image:
    """Resize once (bicubic) to `target_size`; an image already at its target is returned as is."""
    img = img if img.mode == "RGB" else img.convert("RGB")
    h, w = target_size(img.height, img.width, min_pixels, max_pixels, factor)
    if (h, w) == (img.height, img.width):
        return img
    return img.resize((w, h), Image.Resampling.BICUBIC)


def image_grid(img: Image.Image, patch: int = 14, merge: int = 2) -> tuple[int, int, int]:
    """The (t, h, w) patch grid the Qwen2-VL vision tower uses for a prepared image."""
    cell = patch * merge
    if img.height % cell or img.width % cell:
        raise ValueError(
            f"image {img.width}x{img.height} is not prepared: sides must be multiples of {cell}"
        )
    return 1, img.height // patch, img.width // patch
