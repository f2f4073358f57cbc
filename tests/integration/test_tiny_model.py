"""The tiny model: offline build, reload, generation, determinism; model resolution; pixel caps."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from evoquality import prompts
from evoquality.data.images import image_grid, prepare_image
from evoquality.engines import build_messages
from evoquality.models import (
    ModelNotFoundError,
    committed_weak_base,
    load_processor,
    resolve_model,
)
from evoquality.prompts import prompts_fingerprint
from evoquality.tiny_model import MARKER_FILE, TINY_VERSION, make_tiny_model


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _image(seed: int, size: int = 56) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_tiny_model_reloads_offline_and_generates(tiny_model_dir):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    marker = json.loads((tiny_model_dir / MARKER_FILE).read_text())
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir, padding_side="left")
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == marker["parameters"] < 1_000_000
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert processor.image_processor.size["longest_edge"] == marker["max_pixels"]
    assert model.generation_config.do_sample is True

    cases = [
        (2, prompts.comparison_prompt(True), prompts.parse_choice),
        (1, prompts.scoring_prompt(True), prompts.parse_score),
        (1, prompts.scoring_prompt(False), prompts.parse_score),
    ]
    parsed = []
    for n_images, question, parse in cases:
        text = processor.apply_chat_template(
            build_messages(n_images, question), tokenize=False, add_generation_prompt=True
        )
        assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == n_images
        images = [[_image(i + j) for j in range(n_images)] for i in range(2)]
        inputs = processor(text=[text] * 2, images=images, return_tensors="pt", padding=True)
        # 56 x 56 images: a 4 x 4 patch grid, 4 image tokens after the 2 x 2 merge
        assert inputs["image_grid_thw"].tolist() == [[1, 4, 4]] * (2 * n_images)
        assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 2 * n_images * 4
        torch.manual_seed(0)
        out = model.generate(**inputs, max_new_tokens=40, do_sample=True, num_return_sequences=3)
        texts = processor.batch_decode(
            out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        assert len(texts) == 6 and all(isinstance(t, str) for t in texts)
        parsed += [parse(t) for t in texts]
    # The format warm-up makes most answers parseable (the values themselves are noise).
    assert sum(p is not None for p in parsed) >= len(parsed) // 2


def test_build_is_deterministic_for_a_seed(tmp_path):
    build = {"warmup_steps": 2, "hidden_size": 32}
    a = make_tiny_model(tmp_path / "a", seed=3, **build)
    b = make_tiny_model(tmp_path / "b", seed=3, **build)
    c = make_tiny_model(tmp_path / "c", seed=4, **build)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "chat_template.jinja"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        make_tiny_model(a)


def test_tokenizer_has_qwen_special_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>"):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tokenizer.decode(ids) == token
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    text = "<think>sharp</think> \\boxed{3.47}"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_load_processor_applies_the_pixel_caps(tiny_model_dir):
    processor = load_processor(str(tiny_model_dir), min_pixels=3136, max_pixels=50176)
    assert processor.image_processor.size["shortest_edge"] == 3136
    assert processor.image_processor.size["longest_edge"] == 50176
    assert processor.tokenizer.padding_side == "left"
    prepared = prepare_image(_image(0, 400), 3136, 50176)
    out = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[prepared])
    assert tuple(out["image_grid_thw"][0].tolist()) == image_grid(prepared)


def test_resolve_model_sources(tiny_model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    # an existing local directory is used as is
    assert resolve_model(str(tiny_model_dir), cache) == str(tiny_model_dir)
    # "tiny": a finished build in the cache is reused (no rebuild)
    cached = cache / f"tiny-v{TINY_VERSION}-{prompts_fingerprint()[:8]}"
    shutil.copytree(tiny_model_dir, cached)
    assert resolve_model("tiny", cache) == str(cached)
    # "tiny-weak": the committed build, never rebuilt
    assert resolve_model("tiny-weak", cache) == str(committed_weak_base())
    assert not list(cache.glob("tiny-weak*"))
    # file:// store: downloaded once into the cache, keyed by the URI
    store_dir = tmp_path / "store" / "models" / "m1"
    shutil.copytree(tiny_model_dir, store_dir)
    uri = f"file://{store_dir}"
    local = resolve_model(uri, cache)
    assert local.startswith(str(cache)) and (tmp_path / local / "config.json").exists()
    calls = []
    again = resolve_model(uri, cache, store_factory=lambda u: calls.append(u))
    assert again == local and calls == []
    # a store prefix without files / without a model
    with pytest.raises(ModelNotFoundError, match="no files"):
        resolve_model(f"file://{tmp_path}/store/nothing", cache)
    # local-looking paths that do not exist
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"), cache)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model("./models/missing", cache)
    # a hub name that is not cached, offline
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_model("Qwen/Qwen2.5-VL-7B-Instruct", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve_model("Qwen/Qwen2.5-VL-7B-Instruct", cache) == "Qwen/Qwen2.5-VL-7B-Instruct"
