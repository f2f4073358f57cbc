"""Restoring a policy's weights from a Trainer checkpoint (plain and DDP training).

Trainer (transformers 5.20) restores a checkpoint's weights with a raw ``load_state_dict``, but a
checkpoint is written by ``save_pretrained`` in the model's original key layout. For models whose
modules were re-nested (Qwen2.5-VL: ``visual.*`` and ``model.layers.*`` on disk,
``model.visual.*`` and ``model.language_model.layers.*`` in memory) every key but ``lm_head``
misses, with only a warning: a resumed attempt would silently restart from the base weights while
its optimizer state and step count resume (QwenLM/Qwen3-VL#1763). `load_checkpoint_weights` loads
through ``from_pretrained`` instead, which applies the model's own key conversion. DeepSpeed
resumes restore their engine's own state and never come here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_checkpoint_weights(model: Any, checkpoint: str | Path) -> None:
    """Copy the weights saved in ``checkpoint`` (a ``save_pretrained`` folder) into ``model``.

    Strict: raises if a parameter or buffer of ``model`` is not in the checkpoint or vice versa.
    """
    import torch

    dtype = next(model.parameters()).dtype
    saved = type(model).from_pretrained(str(checkpoint), dtype=dtype, device_map="cpu")
    with torch.no_grad():
        model.load_state_dict(saved.state_dict(), strict=True)
    del saved
