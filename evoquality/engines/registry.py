"""Engine construction by name: `make_engine` imports only the engine a spec chooses.

Kept apart from `evoquality.engines.base` so that the interface module never imports the concrete
engines (which import it): vLLM and torch load only when their engine is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evoquality.engines.base import Engine
    from evoquality.spec import ModelSpec


def make_engine(model_spec: ModelSpec, model_path: str, seed: int = 0, **kwargs: Any) -> Engine:
    """The engine named by ``model_spec.engine``.

    Extra keyword arguments go to the vLLM engine (e.g. ``prefix_caching``, ``enforce_eager``).
    """
    if model_spec.engine == "simulated":
        from evoquality.engines.simulated import SimulatedEngine

        if model_spec.simulated is None:
            raise ValueError("model.engine 'simulated' needs model.simulated settings")
        return SimulatedEngine(model_spec.simulated, seed=seed, reasoning=model_spec.reasoning)
    loaded = {
        "min_pixels": model_spec.min_pixels,
        "max_pixels": model_spec.max_pixels,
        "reasoning": model_spec.reasoning,
        "dtype": model_spec.dtype,
        "revision": model_spec.revision,
    }
    if model_spec.engine == "transformers":
        from evoquality.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model_path, **loaded)
    if model_spec.engine == "vllm":
        from evoquality.engines.vllm_engine import VLLMEngine

        return VLLMEngine(
            model_path,
            tensor_parallel_size=model_spec.tensor_parallel,
            gpu_memory_utilization=model_spec.gpu_memory_utilization,
            seed=seed,
            **loaded,
            **kwargs,
        )
    raise ValueError(f"unknown engine {model_spec.engine!r}")
