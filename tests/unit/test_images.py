"""Image loading (corrupt and missing files are counted and skipped) and the one image resize."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from evoquality.data.images import (
    MAX_ASPECT_RATIO,
    ImageError,
    _qwen_smart_resize,
    image_grid,
    load_image,
    load_images,
    prepare_image,
    target_size,
)
from evoquality.storage import open_store

MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 64 * 28 * 28


def save(path, mode: str = "RGB", size=(40, 30), **kwargs):
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(path, **kwargs)
    return path


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_load_image_gives_rgb(tmp_path, mode):
    img = load_image(str(save(tmp_path / "x.png", mode)))
    assert img.mode == "RGB"
    assert img.size == (40, 30)


def test_load_image_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = save(tmp_path / "rotated.jpg", size=(40, 30), exif=exif)
    assert load_image(path.as_uri()).size == (30, 40)


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    with pytest.raises(ImageError, match=r"cannot read image .*missing\.png"):
        load_image(str(tmp_path / "missing.png"))
    (tmp_path / "garbage.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match=r"cannot decode image .*garbage\.png"):
        load_image(str(tmp_path / "garbage.png"))
    good = save(tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageError, match="truncated.png"):
        load_image(str(tmp_path / "truncated.png"))


def test_load_images_skips_and_counts_failures(tmp_path):
    save(tmp_path / "a.png")
    save(tmp_path / "b.jpg")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    opened: list[str] = []

    def factory(uri: str):
        opened.append(uri)
        return open_store(uri)

    uris = [str(tmp_path / n) for n in ["a.png", "bad.png", "b.jpg", "gone.png"]]
    images, failures = load_images(uris, store_factory=factory)
    assert [img is None for img in images] == [False, True, False, True]
    assert len(failures) == 2
    assert "bad.png" in failures[0] and "gone.png" in failures[1]
    assert opened == [str(tmp_path)]  # one store per folder


def test_qwen_rule_for_ordinary_images():
    # Values of Qwen2-VL's smart_resize: round each side to 28, within the caps.
    assert target_size(480, 640, 56 * 56, 28 * 28 * 1280) == (476, 644)
    assert target_size(1080, 1920, 56 * 56, 28 * 28 * 256) == (336, 588)
    assert target_size(10, 10, 56 * 56, 28 * 28 * 256) == (56, 56)


SIZES = [
    (1, 1),
    (3, 5),
    (27, 29),
    (112, 112),
    (300, 451),
    (3000, 4000),
    (8000, 6000),
    (1, 5000),
    (20, 10000),
    (9000, 7),
    (60000, 100),
]
CAPS = [(MIN_PIXELS, MAX_PIXELS), (28 * 28, 28 * 28), (56 * 56, 28 * 28 * 1280), (0, 28 * 28 * 16)]


@pytest.mark.parametrize("caps", CAPS)
@pytest.mark.parametrize("size", SIZES)
def test_target_size_meets_every_constraint(size, caps):
    height, width = size
    lo, hi = caps
    h, w = target_size(height, width, lo, hi)
    assert h % 28 == 0 and w % 28 == 0 and h > 0 and w > 0
    assert lo <= h * w <= hi
    assert max(h, w) / min(h, w) <= MAX_ASPECT_RATIO
    # The HF processor and vLLM apply the same rule to the prepared size: it is the identity.
    assert _qwen_smart_resize(h, w, lo, hi, 28) == (h, w)
    assert target_size(h, w, lo, hi) == (h, w)
    if max(size) / min(size) <= 4 and min(size) >= 28 and hi >= 16 * 28 * 28:
        assert abs(math.log((w / h) / (width / height))) < 0.35


def test_extreme_aspect_is_kept_as_closely_as_the_caps_allow():
    h, w = target_size(20, 10000, MIN_PIXELS, MAX_PIXELS)
    assert (h, w) == (28, 28 * 64)  # one row of cells, as wide as the cap allows
    h, w = target_size(100, 60000, 0, 28 * 28 * 16384)
    assert w / h == MAX_ASPECT_RATIO


def test_prepare_image_resizes_once_and_deterministically():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (301, 449, 3), dtype=np.uint8))
    a = prepare_image(img, MIN_PIXELS, MAX_PIXELS)
    b = prepare_image(img, MIN_PIXELS, MAX_PIXELS)
    assert a.size == (252, 168)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert prepare_image(a, MIN_PIXELS, MAX_PIXELS) is a  # already prepared: untouched
    assert image_grid(a) == (1, 12, 18)
    assert prepare_image(img.convert("L"), MIN_PIXELS, MAX_PIXELS).mode == "RGB"


def test_image_grid_refuses_unprepared_images():
    with pytest.raises(ValueError, match="multiples of 28"):
        image_grid(Image.new("RGB", (30, 28)))


@pytest.mark.parametrize(
    ("caps", "message"),
    [((10, 28 * 28 - 1), "below one 28x28 cell"), ((5000, 4000), "exceeds max_pixels")],
)
def test_invalid_caps(caps, message):
    with pytest.raises(ValueError, match=message):
        target_size(100, 100, *caps)
