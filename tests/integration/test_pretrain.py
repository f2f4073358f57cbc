"""The weak-base pre-training (evoquality.pretrain) on the real tiny model: a short build saves a
loadable model without the auxiliary head, and the vision probe's loss trains the vision tower."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from evoquality.pretrain import WEAK_MARKER_FILE, PretrainSettings, VisionProbe, pretrain_weak_base
from evoquality.tiny_model import MARKER_FILE, make_tiny_model


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_short_pretrain_saves_a_plain_qwen_model(tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    settings = PretrainSettings(steps=3, crops=1, batch_size=4, tiny_warmup_steps=0)
    out = pretrain_weak_base(tmp_path / "weak", tmp_path / "cache", settings)
    marker = json.loads((out / WEAK_MARKER_FILE).read_text())
    assert marker["steps"] == 3 and marker["patch_init"] == "frequency"
    from evoquality.pool import load_manifest

    train = load_manifest("syniqa:train?size=56", tmp_path / "cache")
    assert marker["training_images"] == len(train)  # every training-photo image, no held-out one
    tiny = json.loads((out / MARKER_FILE).read_text())
    assert tiny["patch_init"] == "frequency"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "head" in k and "lm_head" not in k]
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"


def test_vision_probe_loss_reaches_the_vision_tower(tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = make_tiny_model(tmp_path / "m", warmup_steps=0, patch_init="frequency")
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    images = [Image.fromarray(np.full((56, 56, 3), v, np.uint8)) for v in (30, 90, 150, 210)]
    inputs = processor.image_processor(images=images, return_tensors="pt")
    probe = VisionProbe(model, weight=1.0)
    probe.targets = [1.0, 2.0, 4.0, 5.0]
    visual = [p for n, p in model.named_parameters() if "visual" in n]
    optimizer = torch.optim.Adam(visual + probe.parameters(), lr=1e-2)
    first = float(probe(inputs))
    for _ in range(30):
        loss = probe(inputs)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(probe(inputs)) < 0.2 * first


def test_unknown_patch_init_is_refused(tmp_path):
    with pytest.raises(ValueError, match="patch_init"):
        make_tiny_model(tmp_path / "m", warmup_steps=0, patch_init="dct")


def test_photos_subset_trains_on_those_photos_only(tmp_path):
    from evoquality.data.manifest import ManifestError

    settings = PretrainSettings(steps=1, crops=1, batch_size=2, tiny_warmup_steps=0)
    subset = dataclasses.replace(settings, photos=("camera", "chelsea"))
    out = pretrain_weak_base(tmp_path / "weak", tmp_path / "cache", subset)
    marker = json.loads((out / WEAK_MARKER_FILE).read_text())
    assert marker["photos"] == ["camera", "chelsea"]
    assert marker["training_images"] == 36 + 41  # camera is grey: no colour distortion
    held_out = dataclasses.replace(settings, photos=("astronaut",))
    with pytest.raises(ManifestError, match="astronaut"):
        pretrain_weak_base(tmp_path / "never", tmp_path / "cache", held_out)
    assert not (tmp_path / "never").exists()


def test_vision_stage_trains_only_the_tower_and_is_a_no_op_at_zero_steps(tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from evoquality.pretrain import _vision_steps

    path = make_tiny_model(tmp_path / "m", warmup_steps=0, patch_init="frequency")
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    images = [Image.fromarray(np.full((56, 56, 3), v, np.uint8)) for v in (30, 90, 150, 210)]
    targets = np.array([1.0, 2.0, 4.0, 5.0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    generator = torch.get_rng_state()
    _vision_steps(model, processor, images, targets, PretrainSettings(vision_steps=0))
    assert torch.equal(torch.get_rng_state(), generator)  # the v3 recipe's stream is untouched
    settings = PretrainSettings(vision_steps=5, vision_batch_size=4)
    _vision_steps(model, processor, images, targets, settings)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("visual" in n for n in changed)
    assert any("patch_embed" in n for n in changed)


def test_extra_pictures_join_the_training_photos(tmp_path):
    from evoquality.pool import load_manifest

    settings = PretrainSettings(
        steps=1, crops=1, batch_size=2, tiny_warmup_steps=0, photos=("camera",)
    )
    extra = dataclasses.replace(settings, extra_pictures=True, vision_steps=1, vision_batch_size=2)
    out = pretrain_weak_base(tmp_path / "weak", tmp_path / "cache", extra)
    marker = json.loads((out / WEAK_MARKER_FILE).read_text())
    pictures = load_manifest("syniqa:extra?size=56", tmp_path / "cache")
    assert marker["training_images"] == 36 + len(pictures)  # camera: grey, 36 images
    assert marker["extra_pictures"] is True and marker["vision_steps"] == 1


def test_format_warm_up_without_the_tower_trains_only_the_language_side(tmp_path):
    from transformers import AutoModelForImageTextToText

    def weights(warmup_steps, warmup_tower=True):
        path = make_tiny_model(
            tmp_path / f"m{warmup_steps}{warmup_tower}",
            warmup_steps=warmup_steps,
            patch_init="frequency",
            warmup_tower=warmup_tower,
        )
        model = AutoModelForImageTextToText.from_pretrained(path)
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    initial, frozen, trained = weights(0), weights(2, False), weights(2)
    for part, moved in (("visual", trained), ("language", trained), ("language", frozen)):
        assert any(not (moved[n] == initial[n]).all() for n in initial if part in n), part
    assert all((frozen[n] == initial[n]).all() for n in initial if "visual" in n)
