"""Pytest plugin: the tiny Qwen2.5-VL model, built once per test session (cached across sessions).

``tiny_model_dir`` builds `evoquality.tiny_model.make_tiny_model(seed=0)` into pytest's cache
folder, keyed by the tiny model's source, the prompts and the library versions, so a later session
reuses it (~15 s saved). Delete ``.pytest_cache`` (or run ``pytest --cache-clear``) to rebuild.
``tiny_model_spec`` is the spec's ``model`` section that runs it (float32, tiny pixel caps).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def _cache_key() -> str:
    import tokenizers
    import torch
    import transformers

    import evoquality.prompts
    import evoquality.tiny_model

    digest = hashlib.sha256()
    for module in (evoquality.tiny_model, evoquality.prompts):
        digest.update(Path(module.__file__).read_bytes())
    for version in (transformers.__version__, tokenizers.__version__, torch.__version__):
        digest.update(version.encode())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_model_dir(request, tmp_path_factory) -> Path:
    """A directory with the tiny model, processor and chat template (read-only for tests)."""
    from evoquality.tiny_model import MARKER_FILE, build_tiny_model_atomic

    try:
        root = Path(request.config.cache.mkdir(f"evoquality-tiny-{_cache_key()}"))
    except Exception:  # cache provider disabled (-p no:cacheprovider)
        root = tmp_path_factory.mktemp("tiny")
    target = root / "model"
    if not (target / MARKER_FILE).exists():
        build_tiny_model_atomic(target, seed=0)
    return target


def tiny_model_spec(model_dir: Path, engine: str = "transformers", max_pixels: int = 3136) -> dict:
    """The ``model`` section of a spec running the tiny model with ``engine`` (no reasoning)."""
    return {
        "base": str(model_dir),
        "engine": engine,
        "dtype": "float32",
        "reasoning": False,
        "minPixels": 784,
        "maxPixels": max_pixels,
    }
