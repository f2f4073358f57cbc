"""SynIQA: an offline IQA benchmark built from the photos scikit-image ships.

Each reference is center-cropped to a square, resized to `size` and saved with its graded
distortions (`evoquality.data.distortions`). The pseudo-MOS is a documented guess, monotone in the
level: `mos = 5 - STRENGTH[distortion] * level` (the pristine reference, level 0, scores 5). Since
every strength is at most 0.8, the MOS stays within [1, 5] and strictly falls with the level, so
the order within each (reference, distortion) group is known; across distortions it is only a
guess. Colour-only distortions are skipped for grey references, where they change nothing.
`EXTRA_PICTURES` and `MORE_PICTURES` are built the same way but belong to no split of the benchmark.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from evoquality.data.distortions import COLOR_ONLY, DISTORTIONS, LEVELS, distort
from evoquality.data.manifest import Manifest, ManifestError, write_manifest

REFERENCES = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "stereo_motorcycle",
    "retina",
    "hubble_deep_field",
    "immunohistochemistry",
    "camera",
]
# Bundled scikit-image pictures that are NOT benchmark references: textures, text, microscopy and
# graphics, never in any split's photos. Only extra training content for the weak base
# (`syniqa:extra`, `pretrain.PretrainSettings.extra_pictures`): with four photos a tiny model
# learns their scenes; with these beside them its vision tower learns cues that transfer.
EXTRA_PICTURES = [
    "brick",
    "cell",
    "coins",
    "grass",
    "gravel",
    "moon",
    "page",
    "text",
    "microaneurysms",
    "colorwheel",
    "logo",
]
# More bundled pictures outside the benchmark (`syniqa:more`, `PretrainSettings.more_pictures`),
# kept apart from `EXTRA_PICTURES` so that builds logged with `syniqa:extra` rebuild unchanged:
# two photos, a silhouette, a phantom and a synthetic pattern, for a vision tower that needs more
# varied content to learn quality cues that transfer (docs/self-evolution.md, "Fourth search").
MORE_PICTURES = ["cat", "clock", "horse", "shepp_logan_phantom", "checkerboard"]
# Pseudo-MOS drop per level, per distortion (<= 0.8 keeps level 5 at or above 1).
STRENGTH = {
    "gaussian_blur": 0.75,
    "motion_blur": 0.7,
    "gaussian_noise": 0.7,
    "jpeg": 0.65,
    "contrast_decrease": 0.55,
    "pixelate": 0.75,
    "color_saturation": 0.4,
    "darken": 0.5,
}
PRISTINE = "pristine"
MANIFEST_NAME = "manifest.csv"


def pseudo_mos(distortion: str, level: int) -> float:
    """The documented pseudo-MOS of a distortion level (level 0 = the pristine reference)."""
    return 5.0 if level == 0 else round(5.0 - STRENGTH[distortion] * level, 2)


def _photo(name: str) -> tuple[np.ndarray, bool]:
    """A scikit-image photo as an RGB uint8 array; also whether it is grey."""
    import skimage.data
    from skimage.util import img_as_ubyte

    known = REFERENCES + EXTRA_PICTURES + MORE_PICTURES
    if name not in known:
        raise ValueError(f"unknown SynIQA reference {name!r}; known: {', '.join(known)}")
    array = getattr(skimage.data, name)()
    if isinstance(array, tuple):  # stereo_motorcycle: (left, right, disparity)
        array = array[0]
    array = img_as_ubyte(array)  # horse is boolean, shepp_logan_phantom float in [0, 1]
    grey = array.ndim == 2
    return (np.stack([array] * 3, axis=-1) if grey else array[..., :3]), grey


def load_reference(name: str, size: int) -> tuple[Image.Image, bool]:
    """A scikit-image photo, center-cropped square, resized to `size`; also whether it is grey."""
    array, grey = _photo(name)
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(array[top : top + side, left : left + side])
    return square.resize((size, size), Image.Resampling.BICUBIC), grey


def reference_crops(
    name: str, size: int, crops: int, seed: int = 0
) -> tuple[list[Image.Image], bool]:
    """`crops` square crops of a photo (side 35-100 % of its short side, anywhere), resized to
    `size`; crop 0 is the center square (`load_reference`). Deterministic for (seed, name)."""
    if crops < 1:
        raise ValueError(f"crops must be >= 1, got {crops}")
    center, grey = load_reference(name, size)
    array, _ = _photo(name)
    h, w = array.shape[:2]
    rng = np.random.default_rng(_seed(seed, name, "crop", 0))
    images = [center]
    for _ in range(crops - 1):
        side = int(rng.uniform(0.35, 1.0) * min(h, w))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(array[top : top + side, left : left + side])
        images.append(crop.resize((size, size), Image.Resampling.BICUBIC))
    return images, grey


def _seed(seed: int, reference: str, distortion: str, level: int) -> int:
    """A per-image seed that does not depend on which other images are built."""
    key = zlib.crc32(f"{reference}/{distortion}/{level}".encode())
    return int(np.random.SeedSequence([seed, key]).generate_state(1)[0])


def build_syniqa(
    out_dir: Path,
    size: int = 112,
    references: list[str] | None = None,
    levels: int = LEVELS,
    distortions: list[str] | None = None,
    seed: int = 0,
    crops: int = 1,
) -> Path:
    """Write the benchmark's PNGs and `manifest.csv` under `out_dir`; returns the manifest path.

    Columns: image (relative path), mos, reference (the photo), crop (0 = the center square),
    distortion ("pristine" for references), level (0 for references). With ``crops`` > 1 every
    photo gives that many scenes (`reference_crops`), each with all its distortions: more
    content variety for the same photos, so a model must learn quality cues, not the photos.
    """
    references = list(REFERENCES if references is None else references)
    distortions = list(DISTORTIONS if distortions is None else distortions)
    unknown = [d for d in distortions if d not in DISTORTIONS]
    if unknown:
        raise ValueError(f"unknown distortions {unknown}; known: {', '.join(DISTORTIONS)}")
    if not 1 <= levels <= LEVELS:
        raise ValueError(f"levels must be 1..{LEVELS}, got {levels}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rows = []

    def add(img: Image.Image, reference: str, crop: int, distortion: str, level: int) -> None:
        scene = reference if crop == 0 else f"{reference}-c{crop}"
        rel = f"images/{scene}__{distortion}_{level}.png"
        img.save(out_dir / rel)
        rows.append(
            {
                "image": rel,
                "mos": pseudo_mos(distortion, level),
                "reference": reference,
                "crop": crop,
                "distortion": distortion,
                "level": level,
            }
        )

    for reference in references:
        scenes, grey = reference_crops(reference, size, crops, seed)
        for crop, ref_img in enumerate(scenes):
            add(ref_img, reference, crop, PRISTINE, 0)
            scene = reference if crop == 0 else f"{reference}-c{crop}"
            for distortion in distortions:
                if grey and distortion in COLOR_ONLY:
                    continue
                for level in range(1, levels + 1):
                    variant = distort(
                        ref_img, distortion, level, _seed(seed, scene, distortion, level)
                    )
                    add(variant, reference, crop, distortion, level)
    manifest = out_dir / MANIFEST_NAME
    write_manifest(manifest, rows)
    return manifest


def split_references(
    train_fraction: float, seed: int, references: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """Shuffle references with `seed` and split them into (train, held-out), both non-empty."""
    refs = list(REFERENCES if references is None else references)
    n_train = round(train_fraction * len(refs))
    if not 0 < n_train < len(refs):
        raise ValueError(
            f"train_fraction={train_fraction} of {len(refs)} references leaves a side empty"
        )
    order = np.random.default_rng(seed).permutation(len(refs))
    return sorted(refs[i] for i in order[:n_train]), sorted(refs[i] for i in order[n_train:])


def subset_by_references(manifest: Manifest, references: Sequence[str]) -> Manifest:
    """The rows of a SynIQA manifest whose `reference` is one of `references`."""
    if "reference" not in manifest.columns:
        raise ManifestError(f"manifest {manifest.uri} has no 'reference' column")
    present = set(manifest.columns["reference"])
    missing = sorted(set(references) - present)
    if missing:
        raise ManifestError(f"manifest {manifest.uri} has no images of references {missing}")
    wanted = set(references)
    return manifest.subset([i for i, r in enumerate(manifest.columns["reference"]) if r in wanted])
