"""The weak base's perception and its recipe's ablations (docs/self-evolution.md, "Weak base").

    HF_HUB_OFFLINE=1 EVOQUALITY_CACHE=/tmp/evo-cache python benchmarks/weak_base.py [--only recipe]

Builds the one-stage recipe of `tiny-weak` v2 and v3 (`evoquality.pretrain.PretrainSettings()`, the
dataclass defaults; the committed v4 is `pretrain.WEAK_RECIPE`, chosen by
`benchmarks/base_search.py`) and variants that each drop one of its choices, then measures,
deterministically (no sampling), on the HELD-OUT photos (`syniqa:test?crops=4`) and on 1,000 images
of the training photos with the deterministic probe of `evoquality.experiments.probe`
(expected-digit SRCC and spread, comparison accuracy and position bias, SRCC per distortion family).

``--validation`` pre-trains on 5 of the 7 training photos and measures on the other 2 instead of
the held-out photos, so the recipe's choices can be checked without reading the test split.

``--linear-probe`` instead fits a ridge regression (on the training photos' scenes) to features of
the UNTRAINED vision tower's normalised patch embeddings (mean and mean square per channel) and
reports its held-out SRCC, with a random and with the DCT band patch embedding: whether the
quality cues survive the tower's first normalisation at all.

Each variant takes ~4 min of one CPU core to build (the recipe pins one thread); the linear
probe ~20 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from evoquality.experiments.probe import Probe, load_split

VARIANTS = {
    "recipe": {},
    "one scene per photo": {"crops": 1},
    "random patch embedding": {"patch_init": "random"},
    "no vision probe": {"vision_aux_weight": 0.0},
    "v1 recipe (previous)": {
        "families": ("darken", "contrast_decrease"),
        "steps": 600,
        "learning_rate": 3e-3,
        "label_noise": 0.5,
        "compare_share": 0.5,
        "crops": 1,
        "patch_init": "random",
        "vision_aux_weight": 0.0,
    },
}


def patch_features(path: Path, images: list) -> np.ndarray:
    """Mean and mean square per channel of the normalised patch embeddings, per image."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
    inputs = processor.image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        embedded = model.model.visual.patch_embed(inputs["pixel_values"])
    embedded = embedded.reshape(len(images), -1, embedded.shape[-1])
    direction = embedded / embedded.norm(dim=-1, keepdim=True)
    return torch.cat([direction.mean(1), (direction**2).mean(1)], dim=1).numpy()


def linear_probe(out: Path, cache: Path, alpha: float = 100.0) -> None:
    from evoquality.tiny_model import make_tiny_model

    train_images, train_mos, _ = load_split("syniqa:train?size=56&crops=8", cache, 56, None)
    test_images, test_mos, _ = load_split("syniqa:test?size=56&crops=4", cache, 56, None)
    print("| patch embedding | train SRCC | held-out SRCC |\n|---|---|---|")
    for init in ("random", "frequency"):
        path = out / f"untrained-{init}"
        shutil.rmtree(path, ignore_errors=True)
        make_tiny_model(path, warmup_steps=0, patch_init=init)
        x_train, x_test = patch_features(path, train_images), patch_features(path, test_images)
        mean, std = x_train.mean(0), x_train.std(0) + 1e-8
        z_train, z_test = (x_train - mean) / std, (x_test - mean) / std
        gram = z_train.T @ z_train + alpha * np.eye(z_train.shape[1])
        weights = np.linalg.solve(gram, z_train.T @ (train_mos - train_mos.mean()))
        fit = spearmanr(z_train @ weights, train_mos).statistic
        held = spearmanr(z_test @ weights, test_mos).statistic
        print(f"| {init} | {fit:.3f} | {held:.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/evoquality-weak-base"))
    parser.add_argument("--seed", type=int, default=0, help="pre-training seed of every variant")
    parser.add_argument("--linear-probe", action="store_true", help="only the linear probe")
    parser.add_argument(
        "--validation",
        action="store_true",
        help="pre-train on 5 of the 7 training photos and measure on the other 2 (no held-out "
        "photo is read): the recipe's choices checked without the test split",
    )
    args = parser.parse_args()
    from evoquality.pretrain import PretrainSettings, pretrain_weak_base
    from evoquality.stages.context import cache_dir

    cache = cache_dir()
    if args.linear_probe:
        linear_probe(args.out, cache)
        return
    fit_photos = measure_photos = None
    measure_split = "test"
    if args.validation:
        from evoquality.data.syniqa import split_references

        train_photos, _ = split_references(0.75, seed=0)
        fit_photos, measure_photos = split_references(5 / 7, seed=1, references=train_photos)
        measure_split = "train"
        print(f"validation: pre-train on {fit_photos}, measure on {measure_photos}", flush=True)
    rows = []
    for name in args.only:
        settings = dataclasses.replace(
            PretrainSettings(),
            **VARIANTS[name],
            seed=args.seed,
            photos=fit_photos and tuple(fit_photos),
        )
        path = args.out / name.replace(" ", "-")
        shutil.rmtree(path, ignore_errors=True)
        began = time.perf_counter()
        pretrain_weak_base(path, cache, settings)
        built = time.perf_counter() - began
        probe = Probe(path)
        size = settings.image_size
        held_out = load_split(
            f"syniqa:{measure_split}?size={size}&crops=4", cache, size, None, measure_photos
        )
        train = load_split(
            f"syniqa:train?size={size}&crops={settings.crops}", cache, size, 1000, fit_photos
        )
        row = {
            "variant": name,
            "build_s": round(built, 1),
            "held_out": probe.measure(*held_out),
            "train": probe.measure(*train),
        }
        print(json.dumps(row), flush=True)
        print("held-out SRCC per family:", json.dumps(row["held_out"]["per_family"]), flush=True)
        rows.append(row)
    print(
        "\n| variant | held-out SRCC | held-out spread | held-out compare acc. | position bias "
        "| train SRCC | build |\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        h, t = r["held_out"], r["train"]
        print(
            f"| {r['variant']} | {h['srcc']:.3f} | {h['spread']:.3f} | {h['compare_acc']:.3f} "
            f"| {h['position_bias']:+.3f} | {t['srcc']:.3f} | {r['build_s']:.0f} s |"
        )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
