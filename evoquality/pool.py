"""A round's image pool and pair plan, shared by the vote and train stages.

The pool is the manifest's images plus, from `data.augmentation.fromRound` on, synthetic
distortions of each image (the paper's round 2). Variants are never stored: their key
(`<image id>#<distortion>-<level>`) and seed determine their pixels, so every stage rebuilds the
same picture. Built-in datasets (`syniqa:train`, `syniqa:test`, `syniqa:all`, and `syniqa:extra`,
the weak base's extra training pictures) are generated once into the cache, so the quickstart
needs no downloads.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
from PIL import Image

from evoquality.data.distortions import DISTORTIONS, LEVELS, distort
from evoquality.data.images import ImageError, load_image, prepare_image
from evoquality.data.manifest import Manifest, read_manifest, write_manifest
from evoquality.data.syniqa import (
    EXTRA_PICTURES,
    MORE_PICTURES,
    build_syniqa,
    split_references,
    subset_by_references,
)
from evoquality.pairs import plan_pairs
from evoquality.spec import EvoQualityRunSpec, ModelSpec

BUILTIN_SCHEME = "syniqa:"
# Splits of pictures outside the benchmark (the weak base's extra training content), each built
# into a folder of its own.
PICTURE_SPLITS = {"extra": EXTRA_PICTURES, "more": MORE_PICTURES}
SYNIQA_SPLITS = ("train", "test", "all", *PICTURE_SPLITS)
# Simulated judges only: a variant's hidden quality falls by this much per distortion level.
SIMULATED_DROP_PER_LEVEL = 0.4


def stable_seed(*parts: object) -> int:
    """A 32-bit seed from any values, stable across processes (unlike hash())."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


_SEALED: set[str] = set()


class SealedSplitError(RuntimeError):
    """A sealed SynIQA split was asked for (`sealed_splits`)."""


@contextlib.contextmanager
def sealed_splits(*splits: str) -> Iterator[None]:
    """Within the block, resolving `syniqa:<split>` for any of ``splits`` raises
    `SealedSplitError`: a search that must not see the held-out photos seals ``test`` (and
    ``all``, which contains them) so that any read of them fails loudly."""
    unknown = set(splits) - set(SYNIQA_SPLITS)
    if unknown:
        raise ValueError(f"unknown SynIQA splits {sorted(unknown)}; use {SYNIQA_SPLITS}")
    added = set(splits) - _SEALED
    _SEALED.update(added)
    try:
        yield
    finally:
        _SEALED.difference_update(added)


def resolve_manifest(uri: str, cache: Path) -> str:
    """A manifest URI as `read_manifest` takes it; `syniqa:<split>[?size=N&crops=C]` is built on
    first use (C scenes per photo, `evoquality.data.syniqa.reference_crops`; default 1).

    SynIQA splits hold out references: `train` and `test` never share a reference photo;
    `extra` and `more` hold `syniqa.EXTRA_PICTURES` and `syniqa.MORE_PICTURES`, pictures of
    neither (each built into its own folder).
    """
    if not uri.startswith(BUILTIN_SCHEME):
        return uri
    parsed = urlparse(uri)
    split = parsed.path
    if split not in SYNIQA_SPLITS:
        raise ValueError(f"{uri}: unknown SynIQA split {split!r}; use one of {SYNIQA_SPLITS}")
    if split in _SEALED:
        raise SealedSplitError(f"{uri}: the SynIQA split {split!r} is sealed here")
    query = parse_qs(parsed.query)
    size = int(query.get("size", ["56"])[0])
    crops = int(query.get("crops", ["1"])[0])
    if crops < 1:
        raise ValueError(f"{uri}: crops must be >= 1")
    name = f"syniqa-{split}-{size}" if split in PICTURE_SPLITS else f"syniqa-{size}"
    root = cache / "datasets" / (name if crops == 1 else f"{name}-c{crops}")
    full = root / "manifest.csv"
    if not full.exists():
        tmp = root.with_name(f"{root.name}.tmp-{os.getpid()}")
        references = PICTURE_SPLITS.get(split)
        build_syniqa(tmp, size=size, crops=crops, references=references)
        try:
            tmp.rename(root)
        except OSError:  # another process built it first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    if split == "all" or split in PICTURE_SPLITS:
        return str(full)
    out = root / f"manifest-{split}.csv"
    if not out.exists():
        train, held_out = split_references(0.75, seed=0)
        subset = subset_by_references(
            read_manifest(str(full)), train if split == "train" else held_out
        )
        tmp_out = out.with_suffix(f".tmp{os.getpid()}")
        write_manifest(tmp_out, subset.rows())
        tmp_out.replace(out)
    return str(out)


def load_manifest(uri: str, cache: Path, max_images: int | None = None) -> Manifest:
    return read_manifest(resolve_manifest(uri, cache), max_images=max_images)


@dataclass(frozen=True)
class PoolImage:
    key: str  # stable id used in every table
    source: str  # resolved location of the source picture
    distortion: str | None = None
    level: int = 0
    seed: int = 0
    truth: float | None = None  # the manifest's mos: read by the simulated judge only


@dataclass(frozen=True)
class RoundPool:
    images: list[PoolImage]
    groups: np.ndarray  # index of each image's source picture (variants share it)
    n_base: int  # the first n_base images are the manifest's own


def round_pool(
    spec: EvoQualityRunSpec, round_index: int, cache: Path, with_truth: bool = False
) -> RoundPool:
    """The images voted on in a round; `with_truth` copies MOS for the simulated judge only."""
    manifest = load_manifest(spec.data.manifest, cache, spec.data.max_images)
    truth = manifest.mos if with_truth else None
    if with_truth and truth is None:
        raise ValueError(f"the simulated judge needs a `mos` column in {manifest.uri}")
    images = [
        PoolImage(key, source, truth=None if truth is None else float(truth[i]))
        for i, (key, source) in enumerate(zip(manifest.ids, manifest.images, strict=True))
    ]
    groups = list(range(len(images)))
    augmentation = spec.data.augmentation
    if augmentation is not None and round_index >= augmentation.from_round:
        combos = [(name, level) for name in DISTORTIONS for level in range(1, LEVELS + 1)]
        for i, base in enumerate(list(images)):
            rng = np.random.default_rng(stable_seed(spec.seed, "augment", base.key))
            picks = rng.choice(
                len(combos), size=min(augmentation.variants_per_image, len(combos)), replace=False
            )
            for pick in picks:
                name, level = combos[pick]
                images.append(
                    PoolImage(
                        key=f"{base.key}#{name}-{level}",
                        source=base.source,
                        distortion=name,
                        level=level,
                        seed=stable_seed(spec.seed, base.key, name, level),
                        truth=None
                        if base.truth is None
                        else base.truth - SIMULATED_DROP_PER_LEVEL * level,
                    )
                )
                groups.append(i)
    return RoundPool(images, np.asarray(groups, dtype=np.int64), len(manifest))


def plan_round_pairs(
    spec: EvoQualityRunSpec,
    round_index: int,
    pool: RoundPool,
    prev_scores: np.ndarray | None = None,
) -> np.ndarray:
    """All pairs of a round (indices into the pool), deterministic from the run's seed.

    Main pairs follow `voting.sampler` over the manifest's images (`adaptive` needs the previous
    round's scores and uses `balanced` in round 0); augmentation adds pairs of variants of one
    picture (same-reference), as the paper's round 2.
    """
    voting = spec.voting
    seed = stable_seed(spec.seed, "pairs", round_index)
    sampler = voting.sampler
    if sampler == "adaptive" and prev_scores is None:
        sampler = "balanced"
    if sampler == "same-reference":
        parts = [
            plan_pairs(len(pool.images), voting.pairs_per_round, sampler, seed, groups=pool.groups)
        ]
    else:
        parts = [
            plan_pairs(pool.n_base, voting.pairs_per_round, sampler, seed, prev_scores=prev_scores)
        ]
    augmentation = spec.data.augmentation
    if (
        augmentation is not None
        and round_index >= augmentation.from_round
        and sampler != "same-reference"
    ):
        parts.append(
            plan_pairs(
                len(pool.images),
                augmentation.pairs_per_round,
                "same-reference",
                stable_seed(seed, "augmented"),
                groups=pool.groups,
            )
        )
    pairs = np.concatenate(parts)
    _, first = np.unique(np.sort(pairs, axis=1), axis=0, return_index=True)
    return pairs[np.sort(first)]


def load_prepared(
    items: Sequence[PoolImage], model: ModelSpec
) -> tuple[list[Image.Image | None], list[str]]:
    """Load, distort and prepare (pixel caps, sides multiple of 28) pool images; failures listed.

    A source picture is read once even when many variants use it.
    """

    @functools.lru_cache(maxsize=256)
    def source(uri: str) -> Image.Image:
        return load_image(uri)

    out: list[Image.Image | None] = []
    failures: list[str] = []
    for item in items:
        try:
            img = source(item.source)
        except ImageError as err:
            out.append(None)
            failures.append(str(err))
            continue
        if item.distortion is not None:
            img = distort(img, item.distortion, item.level, item.seed)
        out.append(prepare_image(img, model.min_pixels, model.max_pixels))
    return out, failures
