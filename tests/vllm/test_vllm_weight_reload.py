"""vLLM's CPU build reloads a model's weights in place from a folder, and then generates exactly
as the model with those weights: the CPU route of the weight sync in the vLLM rollout design
(docs/training.md, "Rollouts in vLLM"). Measured on the tiny model: the reload takes well under
a second, against ~35 s to build a new engine."""

from __future__ import annotations

import time

import numpy as np
import torch

from evoquality import prompts
from tests.vllm.images import prepared
from tests.vllm.test_vllm_equivalence import LOGPROB_TOLERANCE, hf_logprobs, vllm_prompt

SCALE = 3.0  # the "optimizer step": the output head scaled, so every log-probability moves


def reload(engine, folder: str) -> float:
    """Reload in place, then drop what the old weights computed: cached KV blocks and the
    scheduler's record of cached image encodings. `reload_weights` clears the worker's encoder
    cache but not the scheduler's, which then schedules a cached image the worker no longer
    has: "Encoder cache miss", and the EngineCore dies (vLLM 0.32, seen here)."""
    started = time.monotonic()
    engine.llm.collective_rpc("reload_weights", kwargs={"weights_path": folder})
    engine.llm.llm_engine.reset_encoder_cache()
    engine.llm.reset_prefix_cache()
    return time.monotonic() - started


def test_weights_reloaded_in_place_give_the_new_models_logprobs(
    vllm_engine, hf_engine, tiny_model_dir, tmp_path
):
    images = [item.image for item in prepared(1, side=84, seed=12)]
    text = hf_engine.prompt_text(1, prompts.scoring_prompt(False)) + "\\boxed{3.5}<|im_end|>"

    def gap() -> float:
        out = vllm_prompt(vllm_engine, images, text)
        ids, theirs = hf_logprobs(hf_engine, images, text)
        entries = zip(out.prompt_logprobs[1:], ids[1:], strict=True)
        ours = np.array([entry[token].logprob for entry, token in entries])
        return float(np.abs(ours - theirs).max())

    head = hf_engine.model.lm_head.weight
    try:
        with torch.no_grad():
            head.mul_(SCALE)
        hf_engine.model.save_pretrained(tmp_path / "step-1")
        assert gap() > 0.1  # vLLM still has the old weights: the check can fail
        seconds = reload(vllm_engine, str(tmp_path / "step-1"))
        assert gap() < LOGPROB_TOLERANCE
        assert seconds < 10, seconds
    finally:  # both engines are shared by the session: put the original weights back
        with torch.no_grad():
            head.div_(SCALE)
        reload(vllm_engine, str(tiny_model_dir))
    assert gap() < LOGPROB_TOLERANCE
