"""GRPO with ORACLE labels on an easy signal, from a model that sees nothing yet
(`benchmarks/learning_checks.py --check grey`): can `train_round` + the fidelity reward + the pair
sampler + our GRPOConfig teach a model from scratch when the quality signal is trivially
perceivable?

Images: flat colour squares (56 px, 4 image tokens, mild pixel noise) whose quality is their hue.
Pairs of 64 training images get p* = 1 for the better one (the oracle); 48 other images are held
out. The starting model is given (the plain `tiny` model, whose scores do not depend on the image
at all). After GRPO its mean-of-n scores should rank the HELD-OUT images. ``labels="inverted"``
(p* = 1 for the worse image) is the broken control.

Not a CI check any more: its outcome is bimodal over seeds (the policy either finds the cue or
collapses onto one score, which earns the fidelity reward's tie value sqrt(0.5)), so no threshold
separates it from a broken pipeline (docs/self-evolution.md, "Learning checks").
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from evoquality.data.images import prepare_image
from evoquality.spec import parse_spec
from evoquality.training import TrainRow, train_round

MIN_PIXELS, MAX_PIXELS = 784, 3136  # 56 x 56: 4 image tokens
STEPS = 120
N_SAMPLES = 8  # sampled scores per held-out image (their mean is the prediction)
LR = 1e-3


def grey_images(quality: np.ndarray, rng: np.random.Generator) -> list[Image.Image]:
    """Flat colour (red 30 + 200 q, green 230 - 200 q, blue 128) with N(0, 8) pixel noise.

    Quality is the hue between green and red: it turns the direction of every patch embedding,
    which survives the vision tower's RMSNorm (a brightness alone mostly scales it away)."""
    images = []
    for q in quality:
        colour = np.array([30 + 200 * q, 230 - 200 * q, 128.0])
        noise = rng.normal(0, 8, (56, 56, 3))
        pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
        images.append(prepare_image(Image.fromarray(pixels), MIN_PIXELS, MAX_PIXELS))
    return images


LABELS = ("oracle", "inverted")


def oracle_rows(
    images, quality, n_pairs: int, rng: np.random.Generator, inverted: bool = False
) -> list[TrainRow]:
    """Random pairs, both images as adjacent rows, p* = 1 for the brighter (darker if inverted)."""
    rows = []
    for k in range(n_pairs):
        i, j = (int(x) for x in rng.choice(len(images), 2, replace=False))
        p_star = float((quality[i] > quality[j]) != inverted)
        rows.append(TrainRow(f"train{i}", images[i], k, f"train{j}", p_star))
        rows.append(TrainRow(f"train{j}", images[j], k, f"train{i}", 1.0 - p_star))
    return rows


def make_spec(seed: int, steps: int):
    """The check's training spec: plain GRPO (no KL), lr 1e-3, 4 generations, float32."""
    return parse_spec(
        {
            "seed": seed,
            "data": {"manifest": "unused.csv"},
            "storage": {"uri": "/tmp/unused"},
            "model": {
                "base": "tiny",
                "engine": "transformers",
                "dtype": "float32",
                "reasoning": False,
                "minPixels": MIN_PIXELS,
                "maxPixels": MAX_PIXELS,
            },
            "training": {
                "numGenerations": 4,
                "perDeviceBatchSize": 16,
                "maxSteps": steps,
                "maxCompletionLength": 10,
                "learningRate": LR,
                "beta": 0.0,
                "lossType": "grpo",
                "scaleRewards": "group",
                "temperature": 1.0,
                "deepspeed": "none",
                "saveSteps": 100000,
                "gradientCheckpointing": False,
            },
        }
    )


def heldout_srcc(spec, model_path: str, images, quality) -> dict:
    """SRCC of the mean of N_SAMPLES sampled scores (temperature 1) against the true quality."""
    from evoquality.engines import EngineImage, Sampling, make_engine
    from evoquality.metrics import srcc
    from evoquality.prompts import parse_score

    engine = make_engine(spec.model, model_path, seed=0)
    items = [EngineImage(f"test{i}", image) for i, image in enumerate(images)]
    texts: list[list[str]] = []
    for lo in range(0, len(items), 16):
        texts += engine.score(items[lo : lo + 16], N_SAMPLES, Sampling(1.0, 1.0, 10, 0))
    engine.close()
    scores = np.array(
        [[np.nan if (v := parse_score(t)) is None else v for t in row] for row in texts]
    )
    with np.errstate(all="ignore"):
        mean = np.nanmean(scores, axis=1)
    ok = np.isfinite(mean)
    return {"srcc": srcc(mean[ok], quality[ok]), "parse_rate": float(np.isfinite(scores).mean())}


def run(model_dir: str, out_dir, seed: int, steps: int = STEPS, labels: str = "oracle") -> dict:
    """One check: held-out SRCC before and after GRPO on ``labels`` (one of `LABELS`)."""
    if labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, not {labels!r}")
    rng = np.random.default_rng(100 + seed)
    train_q, test_q = rng.uniform(0, 1, 64), rng.uniform(0, 1, 48)
    train_images, test_images = grey_images(train_q, rng), grey_images(test_q, rng)
    rows = oracle_rows(train_images, train_q, 256, rng, inverted=labels == "inverted")
    spec = make_spec(seed, steps)
    before = heldout_srcc(spec, model_dir, test_images, test_q)
    steps_log: list[dict] = []
    summary = train_round(spec, model_dir, rows, out_dir, on_step=steps_log.append)
    after = heldout_srcc(spec, str(out_dir / "final"), test_images, test_q)
    rewards = [s["reward_mean"] for s in steps_log]
    return {
        "before": before,
        "after": after,
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "reward_first": float(np.mean(rewards[:10])),
        "reward_last": float(np.mean(rewards[-10:])),
    }
