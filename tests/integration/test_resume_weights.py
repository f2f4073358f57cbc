"""A resumed (non-DeepSpeed) training restores the checkpoint's weights, vision tower included."""

import torch
from safetensors.torch import load_file
from transformers import Qwen2_5_VLForConditionalGeneration

from evoquality.training.resume import load_checkpoint_weights


def _load(path):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(str(path), dtype=torch.float32)


def test_checkpoint_weights_load_through_the_key_conversion(tiny_model_dir, tmp_path):
    trained = _load(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    trained.save_pretrained(tmp_path)  # what Trainer writes into checkpoint-<step>

    # What Trainer itself does (a raw load_state_dict): the re-nested keys miss, silently.
    raw = _load(tiny_model_dir).load_state_dict(load_file(tmp_path / "model.safetensors"), False)
    assert any(key.startswith("model.visual.") for key in raw.missing_keys)

    resumed = _load(tiny_model_dir)
    load_checkpoint_weights(resumed, tmp_path)
    expected = trained.state_dict()
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, expected[name]), name
