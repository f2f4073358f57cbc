"""A tiny, randomly initialised Qwen2.5-VL-architecture model, built offline (tests, quickstart).

Everything the real model has is here, only small: the Qwen2.5-VL config (vision tower, windowed
attention, M-RoPE), a byte-level BPE tokenizer trained with `tokenizers` on a small built-in corpus
(the prompt texts, digits, ``\\boxed{}``, ``<think>``) with Qwen's special tokens, the Qwen2.5-VL
chat template (the copy that ships inside TRL), and a processor whose pixel caps keep an image to a
few dozen tokens. So the real processor, `generate`, the TRL GRPO step, save and reload all run on
CPU in seconds.

A purely random model answers with random tokens: no vote or score would ever parse and every GRPO
reward would be 0. So the build ends with a short "format warm-up": a few hundred teacher-forced
steps on chat-formatted prompts with random images, whose answers are random but well formed
(``\\boxed{3.47}``, ``<think>...</think> \\boxed{0}``). The model still knows nothing about image
quality: its scores are noise, but they parse, so every stage and the reward see real numbers.

Deterministic for a seed on one machine (same torch build and thread count).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

MARKER_FILE = "evoquality_tiny.json"
TINY_VERSION = 2  # 2: text head size 32 (2 heads, 1 KV head), for vLLM's CPU attention
TEXT_HEAD_DIM = 32

# Qwen2's special tokens, in Qwen's id order (151643 ... 151656 in the real vocabulary).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

_ADJECTIVES = (
    "sharp", "blurry", "noisy", "clean", "dark", "bright", "overexposed", "underexposed",
    "compressed", "detailed", "washed out", "vivid", "grainy", "crisp", "soft", "pixelated",
)  # fmt: skip
_ASPECTS = ("edges", "colours", "textures", "details", "exposure", "noise", "contrast")


def chat_template_text() -> str:
    """The Qwen2.5-VL chat template shipped inside TRL (`trl/chat_templates/qwen2_5_vl.jinja`)."""
    import trl

    path = Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja"
    return path.read_text()


def _corpus(rng: np.random.Generator) -> list[str]:
    from evoquality import prompts

    lines = [
        prompts.comparison_prompt(True),
        prompts.comparison_prompt(False),
        prompts.scoring_prompt(True),
        prompts.scoring_prompt(False),
        "You are a helpful assistant.",
        "system user assistant",
    ]
    for _ in range(400):
        lines.append(_answer(rng, "score", True))
        lines.append(_answer(rng, "compare", True))
    for value in range(100, 501):
        lines.append(f"\\boxed{{{value / 100:.2f}}}")
    lines += ["\\boxed{0}", "\\boxed{1}", "<answer>0</answer>", "<answer>1</answer>"]
    return lines * 3


def _answer(rng: np.random.Generator, kind: str, reasoning: bool) -> str:
    if kind == "score":
        value = f"{rng.uniform(1.0, 5.0):.2f}"
        thought = (
            f"The image looks {rng.choice(_ADJECTIVES)}; the {rng.choice(_ASPECTS)} are "
            f"{rng.choice(_ADJECTIVES)}."
        )
    else:
        value = str(int(rng.integers(0, 2)))
        which = "first" if value == "0" else "second"
        thought = (
            f"The {which} image is {rng.choice(_ADJECTIVES)}; its {rng.choice(_ASPECTS)} look "
            f"{rng.choice(_ADJECTIVES)}."
        )
    answer = f"\\boxed{{{value}}}"
    return f"<think>{thought}</think> {answer}" if reasoning else answer


def _train_tokenizer(vocab_size: int, seed: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    rng = np.random.default_rng(seed)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(rng), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = state["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.add_tokens([AddedToken(t, special=True) for t in QWEN_SPECIAL_TOKENS], True)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "left"
    ids = tokenizer.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    expected = list(range(len(vocab), len(vocab) + len(QWEN_SPECIAL_TOKENS)))
    if ids != expected:
        raise RuntimeError(f"special token ids {ids} != {expected}")
    return tokenizer


def _config(
    tokenizer, vocab_size: int, hidden_size: int, layers: int, vision_hidden: int, vision_depth: int
):
    from transformers import Qwen2_5_VLConfig

    # Head size 32: the smallest that vLLM's CPU attention supports (16 fails at first generate).
    head_dim = TEXT_HEAD_DIM
    heads = hidden_size // head_dim
    # M-RoPE: temporal/height/width sections must sum to head_dim / 2.
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),  # grouped-query attention, as Qwen2.5-VL
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }
    vision_config = {
        "depth": vision_depth,
        "hidden_size": vision_hidden,
        "intermediate_size": vision_hidden * 2,
        "num_heads": 2,
        "out_hidden_size": hidden_size,
        "fullatt_block_indexes": [vision_depth - 1],
        "window_size": 112,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def frequency_filter_bank(
    out_channels: int, patch: int, temporal: int, seed: int, bands: int = 6
) -> np.ndarray:
    """A patch-embedding weight ``(out, 3, temporal, patch, patch)`` made of 2-D DCT band filters.

    Channel 0 is the luma mean, channels 1-2 the two chroma means; every other channel sums the
    luma DCT coefficients of one frequency band (log-spaced by radius, channels cycling over the
    bands) with random signs. After the vision tower's RMSNorm a patch's embedding direction then
    tells how its energy spreads over brightness, colour and frequency bands: the cues of blur,
    noise, blockiness and contrast, which a random projection followed by a norm hides.
    """
    rng = np.random.default_rng(seed)
    n = np.arange(patch)
    # Orthonormal DCT-II basis: dct[u, x].
    dct = np.sqrt(2.0 / patch) * np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * patch))
    dct[0] /= np.sqrt(2.0)
    luma = np.ones(3) / np.sqrt(3.0)
    chroma = (np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0), np.array([1.0, 1.0, -2.0]) / np.sqrt(6.0))
    time_avg = np.ones(temporal) / np.sqrt(temporal)
    u, v = np.meshgrid(n, n, indexing="ij")
    radius = np.hypot(u, v)
    edges = np.geomspace(1.0, radius.max() + 1e-6, bands + 1)
    band_of = np.digitize(radius, edges) - 1  # -1 for DC
    weight = np.zeros((out_channels, 3, temporal, patch, patch))

    def put(k: int, colour: np.ndarray, spatial: np.ndarray) -> None:
        spatial = spatial / np.linalg.norm(spatial)
        weight[k] = colour[:, None, None, None] * time_avg[None, :, None, None] * spatial

    dc = np.outer(dct[0], dct[0])
    for k, colour in enumerate((luma, *chroma)[:out_channels]):
        put(k, colour, dc)
    for k in range(3, out_channels):
        band = (k - 3) % bands
        signs = rng.choice([-1.0, 1.0], size=(patch, patch)) * (band_of == band)
        put(k, luma, np.einsum("uv,ux,vy->xy", signs, dct, dct))
    return weight.astype(np.float32)


def _random_image(rng: np.random.Generator, size: int):
    from PIL import Image

    base = rng.integers(0, 256, size=(1, 1, 3)).astype(np.float32)
    noise = rng.normal(0, rng.uniform(0, 60), size=(size, size, 3))
    gradient = np.linspace(-40, 40, size, dtype=np.float32)[None, :, None]
    pixels = np.clip(base + noise + gradient, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def visual_parameters(model) -> list:
    """The vision tower's parameters (merger included), in the model's own order. Shared by the
    format warm-up here and the weak-base pre-training's optimizers (`evoquality.pretrain`)."""
    return list(model.model.visual.parameters())


def _warm_up(model, processor, steps: int, image_size: int, seed: int, tower: bool = True) -> float:
    """Teacher-forced steps on well-formed answers (loss on the answer tokens only); with
    ``tower`` False the vision tower (merger included) keeps its initial weights."""
    import torch

    from evoquality import prompts
    from evoquality.engines.base import build_messages

    rng = np.random.default_rng(seed + 1)
    tokenizer = processor.tokenizer
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    visual = {id(p) for p in visual_parameters(model)}
    trained = [p for p in model.parameters() if tower or id(p) not in visual]
    optimizer = torch.optim.AdamW(trained, lr=6e-3, weight_decay=0.0)
    model.train()
    loss_value = float("nan")
    batch = 8
    for _ in range(steps):
        texts, images = [], []
        for _ in range(batch):
            kind = "compare" if rng.random() < 0.5 else "score"
            reasoning = bool(rng.random() < 0.5)
            n_images = 2 if kind == "compare" else 1
            question = (
                prompts.comparison_prompt(reasoning)
                if kind == "compare"
                else prompts.scoring_prompt(reasoning)
            )
            messages = build_messages(n_images, question)
            messages.append({"role": "assistant", "content": [{"type": "text", "text": ""}]})
            prompt = processor.apply_chat_template(
                messages[:1], tokenize=False, add_generation_prompt=True
            )
            texts.append(prompt + _answer(rng, kind, reasoning) + "<|im_end|>\n")
            images.append([_random_image(rng, image_size) for _ in range(n_images)])
        loss_value = answer_step(model, processor, optimizer, texts, images, im_start)
    model.eval()
    return loss_value


def answer_step(
    model, processor, optimizer, texts, images, im_start: int, extra_loss=None
) -> float:
    """One teacher-forced step on chat texts whose loss covers the answer tokens only.

    Everything up to and including the last "<|im_start|>assistant\n" is masked, as is padding.
    ``extra_loss(inputs)``, when given, is added to the answer loss (the weak-base pre-training's
    vision auxiliary loss). Shared by the format warm-up here and the weak-base pre-training
    (`evoquality.pretrain`).
    """
    import torch

    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    labels = inputs["input_ids"].clone()
    labels[inputs["attention_mask"] == 0] = -100
    for row in range(labels.shape[0]):
        starts = (inputs["input_ids"][row] == im_start).nonzero().flatten()
        labels[row, : int(starts[-1]) + 3] = -100
    out = model(**inputs, labels=labels)
    loss = out.loss if extra_loss is None else out.loss + extra_loss(inputs)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def make_tiny_model(
    out_dir: Path,
    seed: int = 0,
    image_size: int = 56,
    vocab_size: int = 2000,
    hidden_size: int = 64,
    layers: int = 2,
    warmup_steps: int = 100,
    vision_hidden_size: int = 32,
    vision_depth: int = 2,
    patch_init: str = "random",
    warmup_tower: bool = True,
) -> Path:
    """Build the tiny model into ``out_dir`` (created; must be empty or absent) and return it.

    ``image_size`` is the side of the warm-up images; the saved processor caps images at
    ``4 * image_size**2`` pixels (56 -> 12544 = 16 x 28 x 28: 16 image tokens) and at least one
    28 x 28 patch. ``warmup_steps`` teacher-forced steps teach the answer format (0 = pure random);
    with ``warmup_tower`` False they leave the vision tower at its initialisation (the warm-up's
    random answers at lr 6e-3 blow its output up 170-380x and can leave the answers blind to the
    image: docs/self-evolution.md, "Seventh search").
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from evoquality.prompts import prompts_fingerprint

    if hidden_size % TEXT_HEAD_DIM:
        raise ValueError(f"hidden_size must be a multiple of the head size {TEXT_HEAD_DIM}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    started = time.perf_counter()

    tokenizer = _train_tokenizer(vocab_size, seed)
    tokenizer.chat_template = chat_template_text()
    min_pixels, max_pixels = 28 * 28, max(28 * 28, 4 * image_size * image_size)
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    video_processor = Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template_text(),
    )

    config = _config(tokenizer, vocab_size, hidden_size, layers, vision_hidden_size, vision_depth)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).float()
        if patch_init == "frequency":
            proj = model.model.visual.patch_embed.proj.weight
            bank = frequency_filter_bank(proj.shape[0], proj.shape[-1], proj.shape[2], seed)
            with torch.no_grad():
                proj.copy_(torch.from_numpy(bank) * float(proj.flatten(1).norm(dim=1).mean()))
        elif patch_init != "random":
            raise ValueError(f"patch_init must be 'random' or 'frequency', not {patch_init!r}")
        loss = (
            _warm_up(model, processor, warmup_steps, image_size, seed, warmup_tower)
            if warmup_steps
            else None
        )

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    model.generation_config = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=64,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    marker = {
        "evoquality_tiny": TINY_VERSION,
        "prompts": prompts_fingerprint(),
        "seed": seed,
        "image_size": image_size,
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "layers": layers,
        "vision_hidden_size": vision_hidden_size,
        "vision_depth": vision_depth,
        "patch_init": patch_init,
        "warmup_steps": warmup_steps,
        "warmup_tower": warmup_tower,
        "warmup_final_loss": loss,
        "parameters": n_params,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return out_dir


def build_atomic(target: Path, marker_file: str, build) -> Path:
    """Run ``build(out_dir)`` into a temporary sibling of ``target`` and rename it into place.

    A ``target`` holding ``marker_file`` is finished and reused; when another builder wins the
    rename race, its model is used. Shared by the tiny model and the weak base
    (`evoquality.pretrain`)."""
    target = Path(target)
    if (target / marker_file).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp / "model")
        try:
            os.replace(tmp / "model", target)
        except OSError:
            # Another builder won the race (target exists and is not empty): use theirs.
            if not (target / marker_file).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_model_atomic(target: Path, seed: int = 0, **kwargs) -> Path:
    """`make_tiny_model` into ``target`` atomically (`build_atomic`); a finished one is reused."""
    return build_atomic(target, MARKER_FILE, lambda out: make_tiny_model(out, seed=seed, **kwargs))
