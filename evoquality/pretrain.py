"""A weak base model for the CPU self-evolution experiment (`make-tiny-model --pretrain`).

A random tiny model has no quality perception, so voting on it is noise. This module gives the tiny
Qwen2.5-VL-architecture model (`evoquality.tiny_model`) weak but real perception: a short
supervised (teacher-forced) fine-tune on SynIQA images of the TRAINING references only
(`syniqa:train`; the held-out references of `syniqa:test` are never read), answering

* the scoring prompt (``prompts.scoring_prompt(False)``) with ``\\boxed{x.xx}``, and
* the comparison prompt (``prompts.comparison_prompt(False)``) with ``\\boxed{0}`` / ``\\boxed{1}``,

both from the SAME deliberately weak targets: the pseudo-MOS plus a fixed per-image Gaussian noise
(``label_noise``), only for some distortion families (``families``, default darken and contrast
decrease; the other images are not seen at all). Measured (docs/self-evolution.md): held-out
mean-of-4 SRCC ~0.23, single-sample ~0.10, comparison accuracy ~0.55 (weak, partial perception).
With all families the tiny vision tower learns nothing within thousands of steps.

Deterministic for a seed on one machine (same torch build and thread count). The saved model keeps
the tiny model's marker (`evoquality_tiny.json`) and adds `evoquality_weak.json` with the settings.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from evoquality.tiny_model import answer_step

WEAK_MARKER_FILE = "evoquality_weak.json"
WEAK_VERSION = 1


@dataclass(frozen=True)
class PretrainSettings:
    """How the weak base is made (the defaults are the experiment's weak base, `tiny-weak`)."""

    seed: int = 0
    image_size: int = 56  # SynIQA side in pixels (`syniqa:train?size=...`)
    steps: int = 600  # teacher-forced optimizer steps
    batch_size: int = 8
    learning_rate: float = 3e-3
    label_noise: float = 0.5  # std of the fixed per-image noise added to the pseudo-MOS
    # Distortion families trained on (None = all). All families with noisy targets stay at ~0
    # SRCC within thousands of steps (the tiny vision tower does not find the cues); brightness
    # and contrast are learnt in a few hundred steps and give a weak, partial perception.
    families: tuple[str, ...] | None = ("darken", "contrast_decrease")
    compare_share: float = 0.5  # share of comparison examples in a batch
    visual_lr_scale: float = 1.0  # learning-rate factor of the vision tower (see _optimizer)
    tiny_warmup_steps: int = 100  # the tiny model's own format warm-up (random answers)


def noisy_targets(
    mos: np.ndarray, noise: float, rng: np.random.Generator, low: float = 1.0, high: float = 5.0
) -> np.ndarray:
    """Pseudo-MOS + a fixed N(0, noise) per image, clipped to [low, high], 2 decimals."""
    mos = np.asarray(mos, dtype=np.float64)
    noisy = mos + rng.normal(0.0, noise, size=mos.shape) if noise > 0 else mos.copy()
    return np.round(np.clip(noisy, low, high), 2)


def select_images(distortions: list[str], families: tuple[str, ...] | None) -> np.ndarray:
    """Indices of the images trained on: pristine references plus the chosen families."""
    if families is None:
        return np.arange(len(distortions))
    wanted = set(families) | {"pristine"}
    return np.array([i for i, d in enumerate(distortions) if d in wanted], dtype=np.int64)


def score_answer(target: float) -> str:
    """The scoring answer for a target: ``\\boxed{x.xx}`` within [1, 5]."""
    return f"\\boxed{{{min(5.0, max(1.0, float(target))):.2f}}}"


def compare_answer(target_first: float, target_second: float, rng: np.random.Generator) -> str:
    """``\\boxed{0}`` when the first image's target is higher, ``\\boxed{1}`` when lower; a tie
    is broken at random."""
    from evoquality.prompts import answer_text

    if target_first == target_second:
        return answer_text(int(rng.integers(0, 2)))
    return answer_text(0 if target_first > target_second else 1)


def _training_images(cache: Path, settings: PretrainSettings):
    from evoquality.data.images import load_image, prepare_image
    from evoquality.pool import load_manifest

    manifest = load_manifest(f"syniqa:train?size={settings.image_size}", cache)
    distortions = list(manifest.columns["distortion"])
    keep = select_images(distortions, settings.families)
    if len(keep) < 2:
        raise ValueError(f"families {settings.families} leave fewer than 2 training images")
    cap = max(28 * 28, settings.image_size * settings.image_size)
    images = [prepare_image(load_image(manifest.images[i]), 28 * 28, cap) for i in keep]
    mos = np.asarray(manifest.mos, dtype=np.float64)[keep]
    return images, mos


def _optimizer(model, settings: PretrainSettings):
    """AdamW with a larger learning rate for the vision tower.

    With one learning rate the tiny model learns the answers' marginal distribution and ignores
    the image (measured: the expected first digit varied by < 0.01 across images after 300 steps);
    the vision tower needs larger steps before its features reach the answer.
    """
    import torch

    visual = [p for n, p in model.named_parameters() if ".visual." in f".{n}"]
    visual_ids = {id(p) for p in visual}
    rest = [p for p in model.parameters() if id(p) not in visual_ids]
    lr = settings.learning_rate
    groups = [{"params": rest, "lr": lr}, {"params": visual, "lr": lr * settings.visual_lr_scale}]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)


def _supervised_steps(model, processor, images, targets, settings: PretrainSettings) -> float:
    """Teacher-forced steps on scoring and comparison answers (loss on the answer tokens only)."""

    from evoquality import prompts
    from evoquality.engines.base import build_messages

    rng = np.random.default_rng(settings.seed + 17)
    im_start = processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    prompt_text = {
        n: processor.apply_chat_template(
            build_messages(
                n, prompts.comparison_prompt(False) if n == 2 else prompts.scoring_prompt(False)
            ),
            tokenize=False,
            add_generation_prompt=True,
        )
        for n in (1, 2)
    }
    optimizer = _optimizer(model, settings)
    model.train()
    loss_value = float("nan")
    for _ in range(settings.steps):
        texts, batch_images = [], []
        for _ in range(settings.batch_size):
            if rng.random() < settings.compare_share:
                i, j = rng.choice(len(images), size=2, replace=False)
                answer = compare_answer(targets[i], targets[j], rng)
                texts.append(prompt_text[2] + answer + "<|im_end|>\n")
                batch_images.append([images[i], images[j]])
            else:
                i = int(rng.integers(0, len(images)))
                texts.append(prompt_text[1] + score_answer(targets[i]) + "<|im_end|>\n")
                batch_images.append([images[i]])
        loss_value = answer_step(model, processor, optimizer, texts, batch_images, im_start)
    model.eval()
    return loss_value


def pretrain_weak_base(
    out_dir: Path, cache: Path, settings: PretrainSettings = PretrainSettings()
) -> Path:
    """Build the tiny model, fine-tune it on weak targets, save it into ``out_dir`` (absent or
    empty); returns ``out_dir``. ``cache`` holds the SynIQA images (built on first use)."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from evoquality.tiny_model import make_tiny_model

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    started = time.perf_counter()
    images, mos = _training_images(Path(cache), settings)
    targets = noisy_targets(mos, settings.label_noise, np.random.default_rng(settings.seed))
    with tempfile.TemporaryDirectory(prefix="weak-base-") as tmp:
        tiny = make_tiny_model(
            Path(tmp) / "tiny", seed=settings.seed, warmup_steps=settings.tiny_warmup_steps
        )
        processor = AutoProcessor.from_pretrained(tiny)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed + 1)
            loss = _supervised_steps(model, processor, images, targets, settings)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        processor.save_pretrained(out_dir)
        from evoquality.tiny_model import MARKER_FILE

        shutil.copy(tiny / MARKER_FILE, out_dir / MARKER_FILE)
    marker = {
        "evoquality_weak": WEAK_VERSION,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()},
        "training_images": len(images),
        "target_srcc_vs_mos": _srcc(targets, mos),
        "final_loss": loss,
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    (out_dir / WEAK_MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return out_dir


def build_weak_base_atomic(target: Path, cache: Path, settings: PretrainSettings) -> Path:
    """Build into a temporary sibling and rename into place; a finished ``target`` is reused."""
    target = Path(target)
    if (target / WEAK_MARKER_FILE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        pretrain_weak_base(tmp / "model", cache, settings)
        try:
            os.replace(tmp / "model", target)
        except OSError:
            if not (target / WEAK_MARKER_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _srcc(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
