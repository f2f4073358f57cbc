"""The vLLM engine run for real (PyPI's CPU build) on the tiny model: each fixed engine bug.

Runs inside the vLLM venv (``make test`` runs ``tests/vllm`` there) on the session's one engine.
Before the fixes: a seeded whole-shard call died (chunked prefill, ``CPU Generator does not use
offset``), greedy with n > 1 raised, identical requests shared their samples, the engine asked
for 90% of the machine's RAM, and the pixel caps used deprecated keywords.
"""

from __future__ import annotations

from evoquality import prompts
from evoquality.engines import Sampling, derive_seed
from evoquality.engines.vllm_engine import build_chat_request
from tests.plugins.vllm import MAX_PIXELS, MIN_PIXELS
from tests.vllm.images import noise, pairs_of, prepared

SAMPLE = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=12, seed=0)


def prompt_ids(engine, images) -> list[int]:
    """vLLM's prompt token ids of one comparison/scoring request (images expanded by vLLM)."""
    question = (
        prompts.comparison_prompt(False) if len(images) == 2 else prompts.scoring_prompt(False)
    )
    params = engine._vllm.SamplingParams(max_tokens=1, temperature=0.0)
    out = engine.llm.chat([build_chat_request(images, question)], params, use_tqdm=False)
    return list(out[0].prompt_token_ids)


def test_a_seeded_whole_shard_call_beyond_the_token_budget_runs(vllm_engine):
    pairs = pairs_of(prepared(16, seed=1)) * 8  # 64 ordered pairs in one call
    before = vllm_engine.stats["prompt_tokens"]
    seeds = [derive_seed(7, i) for i in range(len(pairs))]
    answers = vllm_engine.compare(pairs, 32, SAMPLE, seeds)
    assert len(answers) == 64 and all(len(row) == 32 for row in answers)
    assert vllm_engine.stats["prompt_tokens"] - before > 4096  # vLLM's default step budget
    assert vllm_engine.stats["max_sequences_per_call"] >= 64 * 32


def test_greedy_with_several_votes_repeats_one_answer(vllm_engine):
    pairs = pairs_of(prepared(4, seed=2))
    greedy = Sampling(0.0, 1.0, 12, 0)
    answers = vllm_engine.compare(pairs, 4, greedy)
    assert all(len(row) == 4 and len(set(row)) == 1 for row in answers)
    assert [row[:1] for row in answers] == vllm_engine.compare(pairs, 1, greedy)


def test_draws_are_per_request_and_reproducible_from_its_seed(vllm_engine):
    pairs = pairs_of(prepared(4, seed=3))
    same = [pairs[0]] * 4
    seeds = [derive_seed(0, "vote", 0, pair_id, 0) for pair_id in range(4)]
    answers = vllm_engine.compare(same, 16, SAMPLE, seeds)
    assert len({tuple(row) for row in answers}) == 4, "identical requests must draw differently"
    # the same seed gives the same draws, alone or among other requests
    alone = vllm_engine.compare(same[2:3], 16, SAMPLE, seeds[2:3])
    mixed = vllm_engine.compare([pairs[1], same[2]], 16, SAMPLE, [123, seeds[2]])
    assert alone[0] == answers[2] == mixed[1]


def test_cpu_memory_is_an_explicit_kv_cache_not_a_ram_share(vllm_engine):
    config = vllm_engine.llm.llm_engine.vllm_config
    assert vllm_engine.on_cpu
    assert config.cache_config.kv_cache_memory_bytes == 1 << 30  # VLLM_CPU_KVCACHE_SPACE=1
    assert config.scheduler_config.enable_chunked_prefill is False
    assert config.model_config.enforce_eager and str(config.model_config.dtype) == "torch.float32"


def test_pixel_caps_give_the_hf_processors_image_tokens(vllm_engine, hf_engine):
    """``size={shortest_edge, longest_edge}`` reaches vLLM's processor: an image above the cap is
    shrunk and one below the floor grown exactly as the HF processor does (same token count)."""
    image_pad = hf_engine.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for width, height in [(56, 56), (600, 400), (20, 24), (84, 1000)]:
        images = [noise(width, height, seed=width), noise(height, width, seed=height)]
        ours = prompt_ids(vllm_engine, images)
        theirs = hf_engine.inputs(images, prompts.comparison_prompt(False))["input_ids"][0]
        count = sum(t == image_pad for t in ours)
        assert count == int((theirs == image_pad).sum()), (width, height)
        assert count <= 2 * MAX_PIXELS // (28 * 28) and count >= 2 * MIN_PIXELS // (28 * 28)


def test_a_long_prompt_is_served_from_the_prefix_cache(vllm_engine):
    pairs = pairs_of(prepared(2, side=280, seed=4))  # 100 image tokens per image
    assert len(prompt_ids(vllm_engine, [item.image for item in pairs[0]])) >= 256
    before = vllm_engine.stats["cached_prompt_tokens"]
    vllm_engine.compare(pairs, 8, SAMPLE)
    vllm_engine.compare(pairs, 8, SAMPLE)  # the same prompt again: its full blocks are cached
    assert vllm_engine.stats["cached_prompt_tokens"] - before >= 128
