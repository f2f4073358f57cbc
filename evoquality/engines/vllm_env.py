"""Which Python runs the vLLM engine: vLLM lives in a venv of its own (`make vllm-venv`).

vLLM pins its own torch/transformers stack, so on a workstation it sits in ``.venv-vllm`` beside
the project's ``.venv`` (in the voter image it is the image's only Python). The embedded runner
starts vote and eval stages with `vllm_python()` when ``model.engine`` is ``vllm``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from pathlib import Path

VENV_DIR = ".venv-vllm"
PYTHON_ENV = "EVOQUALITY_VLLM_PYTHON"
REPO_ROOT = Path(__file__).resolve().parents[2]


def vllm_python(env: Mapping[str, str] = os.environ, root: Path = REPO_ROOT) -> str | None:
    """``$EVOQUALITY_VLLM_PYTHON``; else this interpreter when it imports vLLM; else the repo's
    ``.venv-vllm/bin/python``; None when there is none."""
    if env.get(PYTHON_ENV):
        return env[PYTHON_ENV]
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = root / VENV_DIR / "bin" / "python"
    return str(venv) if venv.exists() else None
