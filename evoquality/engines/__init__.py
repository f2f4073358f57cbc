"""Inference engines: vLLM (GPU pods; its CPU build in tests), transformers (CPU), simulated."""

from evoquality.engines.base import Engine, EngineImage, Sampling, build_messages, derive_seed
from evoquality.engines.registry import make_engine

__all__ = ["Engine", "EngineImage", "Sampling", "build_messages", "derive_seed", "make_engine"]
