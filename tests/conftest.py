"""Shared pytest set-up: the fixture plugins of each area (real servers on 127.0.0.1)."""

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# no tqdm bars (trainer, loaders, hub) in captured output: a failure prints what matters
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

pytest_plugins = [
    "tests.plugins.s3server",
    "tests.plugins.tiny_model",
    "tests.plugins.rbac_record",  # before kmock_cluster, which reports to it
    "tests.plugins.kmock_cluster",
    "tests.plugins.job_executor",
    "tests.plugins.helm",
    "tests.plugins.prometheus",
    "tests.plugins.vllm",
]

# tests/vllm runs in-process vLLM: `make test` runs it with the vLLM venv's Python.
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm"]
