"""Engine requests without a model: vLLM request building (grid identity with the HF image
processor), sampling, memory and pixel settings, seeds, the simulated engine, make_engine's lazy
imports."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from evoquality import prompts
from evoquality.data.images import image_grid, prepare_image
from evoquality.engines import (
    Engine,
    EngineImage,
    Sampling,
    build_messages,
    derive_seed,
    make_engine,
)
from evoquality.engines.simulated import SimulatedEngine, unordered_pair_key
from evoquality.engines.vllm_engine import (
    build_chat_request,
    platform_kwargs,
    processor_kwargs,
    sampling_kwargs,
)
from evoquality.spec import ModelSpec, SimulatedJudgeSpec


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_build_chat_request_uses_image_pil_parts_in_order():
    a, b = _image(56, 56, 1), _image(84, 56, 2)
    request = build_chat_request([a, b], "which?")
    assert request == [
        {
            "role": "user",
            "content": [
                {"type": "image_pil", "image_pil": a},
                {"type": "image_pil", "image_pil": b},
                {"type": "text", "text": "which?"},
            ],
        }
    ]
    # The HF-side messages have the same layout: images first, then the question.
    hf = build_messages(2, "which?")
    assert [p["type"] for p in hf[0]["content"]] == ["image", "image", "text"]


def test_sampling_kwargs_always_set_max_tokens_and_greedy_asks_once():
    assert sampling_kwargs(Sampling(0.7, 0.9, 33, 5), 4, seed=77) == {
        "n": 4,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 33,
        "seed": 77,
    }
    greedy = sampling_kwargs(Sampling(0.0, 0.5, 8, 1), 6, seed=2)
    assert greedy == {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 8, "seed": 2}


def test_cpu_settings_size_the_kv_cache_and_turn_chunked_prefill_off():
    gpu = platform_kwargs(False, "bfloat16", 0.85, {"VLLM_CPU_KVCACHE_SPACE": "3"})
    assert gpu == {"gpu_memory_utilization": 0.85, "dtype": "bfloat16"}
    cpu = platform_kwargs(True, "bfloat16", 0.9, {})
    assert cpu == {
        "kv_cache_memory_bytes": 1 << 30,
        "enable_chunked_prefill": False,
        "enforce_eager": True,
        "dtype": "float32",
    }
    more = platform_kwargs(True, "float32", 0.9, {"VLLM_CPU_KVCACHE_SPACE": "3"})
    assert more["kv_cache_memory_bytes"] == 3 << 30
    assert processor_kwargs(784, 3136) == {"size": {"shortest_edge": 784, "longest_edge": 3136}}


def test_derived_seeds_are_stable_distinct_and_fit_vllm():
    assert derive_seed(0, "vote", 1, 5, 0) == derive_seed(0, "vote", 1, 5, 0)
    seeds = {derive_seed(0, "vote", 1, p, o) for p in range(500) for o in (0, 1)}
    assert len(seeds) == 1000 and all(0 <= s < 1 << 62 for s in seeds)
    assert derive_seed(1, 2) != derive_seed("1", 2) != derive_seed(12)
    derived = Engine.request_seeds(Sampling(1, 1, 8, 3), 1, 2, None)
    assert derived == [derive_seed(3, 0), derive_seed(3, 1)]
    with pytest.raises(ValueError, match="2 seeds for 3 requests"):
        Engine.request_seeds(Sampling(1, 1, 8, 3), 1, 3, [1, 2])


@pytest.mark.parametrize(
    ("size", "caps"),
    [
        ((640, 480), (3136, 401408)),
        ((100, 3000), (3136, 50176)),
        ((37, 29), (784, 12544)),
        ((1920, 1080), (3136, 12544)),
        ((56, 56), (3136, 3136)),
    ],
)
def test_prepared_images_give_the_same_grid_on_both_sides(size, caps):
    """HF's image processor (the trainer, and vLLM's Qwen2.5-VL processor with the same
    mm_processor_kwargs) sees the grid `image_grid` predicts: no second resize anywhere."""
    from transformers import Qwen2VLImageProcessor

    min_pixels, max_pixels = caps
    prepared = prepare_image(_image(*size), min_pixels, max_pixels)
    processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    request = build_chat_request([prepared, prepared], "q")
    images = [part["image_pil"] for part in request[0]["content"] if part["type"] == "image_pil"]
    out = processor(images=images, return_tensors="pt")
    expected = image_grid(prepared)
    assert [tuple(row) for row in out["image_grid_thw"].tolist()] == [expected, expected]
    assert out["pixel_values"].shape[0] == 2 * expected[0] * expected[1] * expected[2]


def _settings(**kw) -> SimulatedJudgeSpec:
    return SimulatedJudgeSpec(**kw)


def _pairs(truths_first, truths_second):
    return [
        (EngineImage(f"a{i}", None, qa), EngineImage(f"b{i}", None, qb))
        for i, (qa, qb) in enumerate(zip(truths_first, truths_second, strict=True))
    ]


@pytest.mark.parametrize("reasoning", [True, False])
def test_simulated_answers_parse(reasoning):
    engine = SimulatedEngine(_settings(), seed=1, reasoning=reasoning)
    assert engine.needs_pixels is False and engine.name == "simulated"
    texts = engine.compare(_pairs([4.0, 1.0], [1.0, 4.0]), 5, Sampling(1.0, 1.0, 16, 3))
    assert len(texts) == 2 and all(len(t) == 5 for t in texts)
    assert all(prompts.parse_choice(t) in (0, 1) for row in texts for t in row)
    assert all(("<think>" in t) == reasoning for row in texts for t in row)
    scores = engine.score([EngineImage("x", None, 3.3)], 4, Sampling(1.0, 1.0, 16, 0))
    assert len(scores[0]) == 4
    assert all(1.0 <= prompts.parse_score(t) <= 5.0 for t in scores[0])


def test_simulated_accuracy_follows_settings():
    from scipy.special import expit

    n_pairs, k = 400, 20
    rng = np.random.default_rng(0)
    first = rng.uniform(1, 5, n_pairs)
    second = rng.uniform(1, 5, n_pairs)
    sampling = Sampling(1.0, 1.0, 16, 7)

    def share_first(settings):
        engine = SimulatedEngine(settings, seed=2, reasoning=False)
        texts = engine.compare(_pairs(first, second), k, sampling)
        return np.array([[prompts.parse_choice(t) == 0 for t in row] for row in texts]).mean(1)

    temperature = 0.5
    observed = share_first(_settings(temperature=temperature)).mean()
    expected = expit((first - second) / temperature).mean()
    assert abs(observed - expected) < 0.03
    # every pair systematically inverted
    inverted = share_first(_settings(temperature=temperature, pair_error=1.0)).mean()
    assert abs(inverted - expit((second - first) / temperature).mean()) < 0.03
    # the first-shown image always wins
    assert share_first(_settings(position_bias=1.0)).min() == 1.0


def test_simulated_scores_noise_and_reproducibility():
    engine = SimulatedEngine(_settings(score_noise=0.2), seed=0)
    items = [EngineImage(f"i{j}", None, 1.0 + j) for j in range(5)]
    sampling = Sampling(1.0, 1.0, 16, 11)
    a = engine.score(items, 200, sampling)
    b = engine.score(items, 200, sampling)
    assert a == b
    # a request's samples depend on its own seed only, not on the other requests of its call
    assert engine.score(items[2:3], 200, sampling, seeds=[derive_seed(11, 2)]) == a[2:3]
    for j, row in enumerate(a):
        values = np.array([prompts.parse_score(t) for t in row])
        assert values.min() >= 1.0 and values.max() <= 5.0
        if 0 < j < 4:  # away from the clipping bounds
            assert abs(values.mean() - (1.0 + j)) < 0.06
            assert 0.15 < values.std() < 0.25
    greedy = engine.score(items[:1], 3, Sampling(0.0, 1.0, 16, 1))
    assert len(set(greedy[0])) == 1
    assert greedy == engine.score(items[:1], 3, Sampling(0.0, 1.0, 16, 99))


def test_simulated_needs_truth_and_pair_keys_are_unordered():
    engine = SimulatedEngine(_settings(), seed=0)
    with pytest.raises(ValueError, match="truth"):
        engine.compare([(EngineImage("a", None), EngineImage("b", None))], 1, Sampling(1, 1, 8, 0))
    assert unordered_pair_key("a", "b") == unordered_pair_key("b", "a")
    assert unordered_pair_key("a", "b") != unordered_pair_key("a", "c")


def test_make_engine_picks_by_spec_and_imports_vllm_lazily():
    spec = ModelSpec(engine="simulated", simulated=SimulatedJudgeSpec())
    engine = make_engine(spec, "unused", seed=3)
    assert isinstance(engine, SimulatedEngine) and engine.seed == 3
    assert "vllm" not in sys.modules  # importing the engines never imports vLLM
    import evoquality.engines.base as base

    assert not hasattr(base, "make_engine")  # the interface imports no concrete engine
    try:
        import vllm  # noqa: F401
    except ImportError:  # CPU machines: choosing vllm fails at construction, not at import
        with pytest.raises(ImportError):
            make_engine(ModelSpec(engine="vllm"), "/nonexistent")
