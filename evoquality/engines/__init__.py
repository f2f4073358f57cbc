"""Inference engines: vLLM (GPU), transformers (CPU, tests), simulated (tests, benchmarks)."""

from evoquality.engines.base import Engine, EngineImage, Sampling, build_messages, make_engine

__all__ = ["Engine", "EngineImage", "Sampling", "build_messages", "make_engine"]
