"""The sources of the spec's defaults: each voting, ranking, training and evaluation field ends its
description with a tag (``[paper]``, ``[model card]``, ``[VisualQuality-R1]`` or
``[our choice: reason]``); `sourced_defaults` lists every such field with its default and source,
which docs/training.md tabulates ("Defaults and their sources") and a test compares.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel

from evoquality.spec import EvoQualityRunSpec

SOURCES = ("paper", "model card", "VisualQuality-R1", "our choice")
_TAG = re.compile(r"\[(paper|model card|VisualQuality-R1|our choice)(?::[^\]]*)?\]\s*$")
# (section, fields left out): the settings of the method, not of the infrastructure around it.
SECTIONS: dict[str, tuple[str, ...]] = {
    "": ("rounds",),
    "model": ("base", "min_pixels", "max_pixels", "reasoning"),
    "data.augmentation": (),
    "voting": (),
    "ranking": (),
    "training": (),
    "training.rollouts": (),
    "evaluation": (),
}
_SKIPPED = {"evaluation": ("benchmarks",), "training": ("lora", "rollouts")}


def source_of(description: str | None) -> str | None:
    """The source tag at the end of a field description, or ``None``."""
    match = _TAG.search(description or "")
    return match.group(1) if match else None


def _section_model(path: str) -> type[BaseModel]:
    model: Any = EvoQualityRunSpec
    for part in filter(None, path.split(".")):
        annotation = model.model_fields[part].annotation
        model = next(
            a
            for a in (*getattr(annotation, "__args__", ()), annotation)
            if isinstance(a, type) and issubclass(a, BaseModel)
        )
    return model


def sourced_defaults() -> dict[str, tuple[Any, str | None]]:
    """``{"training.learningRate": (3e-07, "paper"), ...}`` in camelCase dotted paths."""
    out: dict[str, tuple[Any, str | None]] = {}
    for section, only in SECTIONS.items():
        model = _section_model(section)
        for name, field in model.model_fields.items():
            if (only and name not in only) or name in _SKIPPED.get(section, ()):
                continue
            default = field.get_default(call_default_factory=True)
            path = ".".join(filter(None, (section, field.alias or name)))
            out[path] = (default, source_of(field.description))
    lora = _section_model("training.lora").model_fields["enabled"]
    out["training.lora.enabled"] = (lora.default, source_of(lora.description))
    return out
