"""SynIQA (file counts, known order, determinism, reference splits) and its distortions."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from evoquality.data.distortions import COLOR_ONLY, DISTORTIONS, augment_variants, distort
from evoquality.data.manifest import ManifestError, read_manifest
from evoquality.data.syniqa import (
    PRISTINE,
    REFERENCES,
    build_syniqa,
    load_reference,
    reference_crops,
    split_references,
    subset_by_references,
)


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("syniqa")
    start = time.perf_counter()
    path = build_syniqa(out)
    return path, time.perf_counter() - start


def test_default_build_counts_and_speed(default_build):
    path, seconds = default_build
    assert seconds < 15
    m = read_manifest(str(path))
    grey = {r for r in REFERENCES if load_reference(r, 8)[1]}
    assert len(REFERENCES) >= 8 and len(DISTORTIONS) >= 5
    expected = sum(
        1 + 5 * len(DISTORTIONS if r not in grey else set(DISTORTIONS) - COLOR_ONLY)
        for r in REFERENCES
    )
    assert len(m) == expected
    assert sorted(p.name for p in (path.parent / "images").iterdir()) == sorted(
        i.split("/")[-1] for i in m.ids
    )
    assert set(m.columns) == {"reference", "crop", "distortion", "level"}
    assert set(m.columns["crop"]) == {"0"}
    sizes = {Image.open(p).size for p in m.images[:: max(1, len(m) // 20)]}
    assert sizes == {(112, 112)}


def test_mos_falls_strictly_with_level_in_every_group(default_build):
    m = read_manifest(str(default_build[0]))
    assert m.mos.min() >= 1.0 and m.mos.max() == 5.0
    groups: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    pristine = {}
    for i, (ref, dist, level) in enumerate(
        zip(m.columns["reference"], m.columns["distortion"], m.columns["level"], strict=True)
    ):
        if dist == PRISTINE:
            pristine[ref] = m.mos[i]
            assert level == "0"
        else:
            groups[ref, dist].append((int(level), m.mos[i]))
    assert set(pristine) == set(REFERENCES)
    for (ref, _), entries in groups.items():
        mos = [score for _, score in sorted(entries)]
        assert [lvl for lvl, _ in sorted(entries)] == [1, 2, 3, 4, 5]
        assert pristine[ref] > mos[0] and all(np.diff(mos) < 0)


def _digest(manifest_path) -> str:
    m = read_manifest(str(manifest_path))
    h = hashlib.sha256(manifest_path.read_bytes())
    for p in m.images:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def test_build_is_deterministic_and_seeded(tmp_path):
    kwargs = {"size": 32, "references": ["coffee", "camera"], "levels": 2}
    first = build_syniqa(tmp_path / "a", **kwargs)
    assert _digest(first) == _digest(build_syniqa(tmp_path / "b", **kwargs))
    assert _digest(first) != _digest(build_syniqa(tmp_path / "c", seed=1, **kwargs))
    m = read_manifest(str(first))
    assert len(m) == 2 + 2 * (len(DISTORTIONS) + len(DISTORTIONS) - len(COLOR_ONLY))


def test_reference_crops_are_deterministic_distinct_scenes():
    crops, grey = reference_crops("coffee", 32, 4, seed=0)
    assert len(crops) == 4 and not grey
    assert all(c.size == (32, 32) for c in crops)
    assert np.array_equal(np.asarray(crops[0]), np.asarray(load_reference("coffee", 32)[0]))
    arrays = [np.asarray(c, dtype=np.float64) for c in crops]
    assert all(np.abs(arrays[i] - arrays[j]).mean() > 5 for i in range(4) for j in range(i))
    again, _ = reference_crops("coffee", 32, 4, seed=0)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(crops, again, strict=True)
    )
    other, _ = reference_crops("coffee", 32, 4, seed=1)
    assert not np.array_equal(np.asarray(crops[1]), np.asarray(other[1]))
    with pytest.raises(ValueError, match="crops must be >= 1"):
        reference_crops("coffee", 32, 0)


def test_build_with_crops_keeps_the_photo_as_reference(tmp_path):
    m = read_manifest(
        str(build_syniqa(tmp_path, size=32, references=["coffee"], levels=1, crops=3))
    )
    per_scene = 1 + len(DISTORTIONS)
    assert len(m) == 3 * per_scene and len(set(m.ids)) == len(m)
    assert set(m.columns["reference"]) == {"coffee"}
    assert sorted(m.columns["crop"]) == sorted(["0", "1", "2"] * per_scene)
    # Held-out splits stay photo-disjoint: subsetting by photo keeps every crop.
    assert len(subset_by_references(m, ["coffee"])) == len(m)


def test_build_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown distortions"):
        build_syniqa(tmp_path, distortions=["fog"])
    with pytest.raises(ValueError, match="unknown SynIQA reference"):
        build_syniqa(tmp_path, references=["lena"])
    with pytest.raises(ValueError, match="levels must be"):
        build_syniqa(tmp_path, levels=6)


@pytest.mark.parametrize("name", sorted(DISTORTIONS))
def test_psnr_falls_with_level(name):
    img, _ = load_reference("astronaut", 112)
    ref = np.asarray(img)
    psnr = [
        peak_signal_noise_ratio(ref, np.asarray(distort(img, name, level, seed=3)))
        for level in range(1, 6)
    ]
    assert all(np.diff(psnr) < 0), psnr


def test_distort_validates_and_is_deterministic():
    img, _ = load_reference("chelsea", 32)
    a = np.asarray(distort(img, "gaussian_noise", 2, seed=5))
    assert np.array_equal(a, np.asarray(distort(img, "gaussian_noise", 2, seed=5)))
    assert not np.array_equal(a, np.asarray(distort(img, "gaussian_noise", 2, seed=6)))
    with pytest.raises(ValueError, match="unknown distortion"):
        distort(img, "fog", 1, 0)
    with pytest.raises(ValueError, match="level must be 1..5"):
        distort(img, "jpeg", 0, 0)


def test_augment_variants():
    img, _ = load_reference("rocket", 32)
    variants = augment_variants(img, 6, seed=0)
    assert len({(name, level) for name, level, _ in variants}) == 6
    assert all(v.size == img.size for _, _, v in variants)
    again = augment_variants(img, 6, seed=0)
    assert [(n, lv) for n, lv, _ in again] == [(n, lv) for n, lv, _ in variants]
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for (_, _, a), (_, _, b) in zip(variants, again, strict=True)
    )
    with pytest.raises(ValueError, match="distinct"):
        augment_variants(img, 5 * len(DISTORTIONS) + 1, seed=0)


def test_split_and_subset_by_references(default_build):
    train, held_out = split_references(0.7, seed=1)
    assert not set(train) & set(held_out)
    assert sorted(train + held_out) == sorted(REFERENCES)
    assert len(train) == round(0.7 * len(REFERENCES))
    assert split_references(0.7, seed=1) == (train, held_out)
    with pytest.raises(ValueError, match="leaves a side empty"):
        split_references(0.01, seed=1)

    m = read_manifest(str(default_build[0]))
    sub = subset_by_references(m, held_out)
    assert set(sub.columns["reference"]) == set(held_out)
    assert len(sub) == sum(r in held_out for r in m.columns["reference"])
    with pytest.raises(ManifestError, match="no images of references"):
        subset_by_references(sub, train[:1])


def test_builtin_uri_with_crops_is_built_once_and_split_by_photo(tmp_path):
    from evoquality.pool import load_manifest, resolve_manifest

    train = load_manifest("syniqa:train?size=28&crops=2", tmp_path)
    test = load_manifest("syniqa:test?size=28&crops=2", tmp_path)
    assert {"syniqa-28-c2"} == {p.name for p in (tmp_path / "datasets").iterdir()}
    assert not set(train.columns["reference"]) & set(test.columns["reference"])
    assert set(train.columns["crop"]) == set(test.columns["crop"]) == {"0", "1"}
    plain = load_manifest("syniqa:test?size=28", tmp_path)
    assert len(test) == 2 * len(plain)
    with pytest.raises(ValueError, match="crops must be >= 1"):
        resolve_manifest("syniqa:test?size=28&crops=0", tmp_path)


def test_sealed_splits_refuse_the_held_out_photos_only_inside_the_block(tmp_path):
    from evoquality.pool import SealedSplitError, load_manifest, sealed_splits

    with sealed_splits("test", "all"):
        for split in ("test", "all"):
            with pytest.raises(SealedSplitError, match=f"split '{split}' is sealed"):
                load_manifest(f"syniqa:{split}?size=28", tmp_path)
        train = load_manifest("syniqa:train?size=28", tmp_path)  # still readable
        with sealed_splits("test"):  # nested: the outer seal survives the inner block
            pass
        with pytest.raises(SealedSplitError):
            load_manifest("syniqa:test?size=28", tmp_path)
    assert len(load_manifest("syniqa:test?size=28", tmp_path)) > 0
    assert len(train) > 0
    with pytest.raises(ValueError, match="unknown SynIQA splits"), sealed_splits("validation"):
        pass


@pytest.mark.parametrize("split", ["extra", "more"])
def test_picture_splits_are_their_own_splits_outside_the_benchmark(tmp_path, split):
    from evoquality.data.syniqa import REFERENCES
    from evoquality.pool import PICTURE_SPLITS, load_manifest, sealed_splits

    pictures = PICTURE_SPLITS[split]
    others = {p for name, group in PICTURE_SPLITS.items() if name != split for p in group}
    assert not set(pictures) & (set(REFERENCES) | others)
    with sealed_splits("test", "all"):  # the search seals the held-out photos, not these
        extra = load_manifest(f"syniqa:{split}?size=28", tmp_path)
    assert set(extra.columns["reference"]) == set(pictures)
    assert {p.name for p in (tmp_path / "datasets").iterdir()} == {f"syniqa-{split}-28"}
    distortions = extra.columns["distortion"]
    pristine = [i for i, d in zip(extra.images, distortions, strict=True) if d == "pristine"]
    assert len(pristine) == len(pictures)
    for image in pristine:  # boolean and float pictures (horse, phantom) decode to RGB
        with Image.open(image) as decoded:
            assert decoded.mode == "RGB" and np.asarray(decoded).std() > 0
    everything = load_manifest("syniqa:all?size=28", tmp_path)
    assert not set(everything.columns["reference"]) & set(pictures)
    built = {p.name for p in (tmp_path / "datasets").iterdir()}
    assert built == {f"syniqa-{split}-28", "syniqa-28"}
