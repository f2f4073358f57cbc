"""GPU-hours per stage of the 7B example, from a FLOP and memory-bandwidth model, beside what vLLM's
CPU build measures on the tiny model.

Model (every assumption is a named constant below; change them and rerun):

* prefill of a request = text FLOPs ``2 N T`` + causal attention ``2 L d T^2`` + the vision tower
  ``2 N_vis P`` over the images' 14x14 patches P; vLLM's prefix caching makes the K votes of one
  ordered pair share one prefill (``n = K/2`` per order);
* decode runs ``b`` sequences per step; a step takes the longer of reading the weights once
  (memory bound) and ``2 N b`` FLOPs at the decode MFU (compute bound); ``b`` is what the engine
  keeps in flight: a batch-8 call starts with 8 pairs x 2 orders x K/2 sequences and drains to its
  slowest completion (mean occupancy `TAIL_OCCUPANCY`), a whole-shard call keeps the KV cache full;
* training (GRPO, TRL): rollouts by HF generate at `TRAIN_GENERATE_BATCH` sequences per GPU (memory
  bound steps), then ``6 N`` FLOPs per token for the policy's forward and backward and ``2 N`` for
  the reference model (beta > 0), at `TRAIN_MFU`;
* pixel caps: ours (``maxPixels`` 512 x 28 x 28 = 401,408) vs the paper's Qwen2.5-VL default
  (16,384 x 28 x 28 = 12.8 MP, for photos at least that large): 512 vs 16,384 tokens per image.

Measured (``--measure``, run with the vLLM venv's Python): the tiny model on vLLM's CPU build, a
vote workload of pairs of 280 x 280 images (100 tokens each) with K votes, in calls of 8 pairs
(both orders) vs the whole shard in one call: prompt and generated tokens per pair, the cached
share of prompt tokens, sequences in flight per call, pairs/s.

    python benchmarks/cost.py                        # the 7B table
    .venv-vllm/bin/python benchmarks/cost.py --measure   # plus the CPU measurement
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace

# -- the 7B example (examples/qwen2.5-vl-7b.yaml) -------------------------------------------------
TEXT_PARAMS = 7.07e9  # Qwen2.5-VL-7B language model
VISION_PARAMS = 0.67e9
LAYERS, HIDDEN = 28, 3584
KV_BYTES_PER_TOKEN = 2 * LAYERS * 4 * 128 * 2  # K and V, 4 KV heads x 128, bf16
WEIGHT_BYTES = 2 * (TEXT_PARAMS + VISION_PARAMS)
PAIRS, VOTES, ROUNDS = 20_000, 32, 2
EVAL_IMAGES = 2_010 + 11_125 + 1_162 + 2_982 + 10_125 + 1_650 + 866  # the seven benchmarks
EVALS = ROUNDS + 1  # the base model and every round
GENERATIONS, TRAIN_ROWS = 32, 2 * PAIRS  # G rollouts per image, both images of every pair
TEXT_TOKENS = 120  # question and chat template, with the think-then-answer instruction
MEAN_COMPLETION = 300  # tokens of reasoning + answer (our assumption; the cap is 1,024)
PIXEL_CAPS = {"ours 401k px": 401_408, "paper 12.8 MP": 12_845_056}

# -- hardware and efficiency assumptions (one H100 80 GB per vote/eval pod, 8 for training) ------
PEAK_FLOPS = 989e12  # bf16 dense
HBM_BYTES_PER_S = 3.35e12
HBM_BYTES = 80e9
KV_SHARE = 0.9  # of the memory left after the weights
PREFILL_MFU, DECODE_MFU, TRAIN_MFU = 0.45, 0.5, 0.35
TAIL_OCCUPANCY = 0.5  # mean/peak sequences in flight over a call that waits for its slowest
TRAIN_GENERATE_BATCH = 64  # perDeviceBatchSize completions per HF generate call
HF_GENERATE_OVERHEAD = 2.0  # HF generate step time / the memory-bound step time


@dataclass(frozen=True)
class Workload:
    requests: int  # prompts (an ordered pair, or an image)
    images: int  # images per prompt
    samples: int  # completions per prompt (vLLM's n)
    pixels: int  # per image


def image_tokens(pixels: int) -> int:
    return pixels // (28 * 28)


def prompt_tokens(w: Workload) -> int:
    return w.images * image_tokens(w.pixels) + TEXT_TOKENS


def prefill_flops(w: Workload) -> float:
    tokens = prompt_tokens(w)
    text = 2 * TEXT_PARAMS * tokens + 2 * LAYERS * HIDDEN * tokens**2
    vision = 2 * VISION_PARAMS * w.images * (w.pixels // (14 * 14))
    return w.requests * (text + vision)


def kv_capacity_sequences(w: Workload) -> float:
    """Sequences whose KV fits: each holds its completion and a 1/n share of its prompt."""
    per_sequence = MEAN_COMPLETION / 2 + prompt_tokens(w) / w.samples
    return KV_SHARE * (HBM_BYTES - WEIGHT_BYTES) / (KV_BYTES_PER_TOKEN * per_sequence)


def in_flight(w: Workload, prompts_per_call: int | None) -> float:
    """Mean sequences per decode step: ``prompts_per_call`` prompts per call, or whole shards."""
    capacity = kv_capacity_sequences(w)
    if prompts_per_call is None:
        return capacity
    return min(capacity, prompts_per_call * w.samples) * TAIL_OCCUPANCY


def decode_seconds(tokens: float, sequences: float, overhead: float = 1.0) -> float:
    memory = WEIGHT_BYTES / HBM_BYTES_PER_S * overhead
    compute = 2 * TEXT_PARAMS * sequences / (PEAK_FLOPS * DECODE_MFU)
    return tokens / sequences * max(memory, compute)


@dataclass(frozen=True)
class Cost:
    prefill_h: float
    decode_h: float
    train_h: float = 0.0

    @property
    def total(self) -> float:
        return self.prefill_h + self.decode_h + self.train_h


def inference_cost(w: Workload, prompts_per_call: int | None) -> Cost:
    prefill = prefill_flops(w) / (PEAK_FLOPS * PREFILL_MFU)
    tokens = w.requests * w.samples * MEAN_COMPLETION
    return Cost(prefill / 3600, decode_seconds(tokens, in_flight(w, prompts_per_call)) / 3600)


def train_cost(pixels: int) -> Cost:
    rollouts = TRAIN_ROWS * GENERATIONS
    prompt = image_tokens(pixels) + TEXT_TOKENS
    w = Workload(TRAIN_ROWS, 1, GENERATIONS, pixels)
    generate = decode_seconds(
        rollouts * MEAN_COMPLETION, TRAIN_GENERATE_BATCH, HF_GENERATE_OVERHEAD
    )
    update = 8 * TEXT_PARAMS * rollouts * (prompt + MEAN_COMPLETION) / (PEAK_FLOPS * TRAIN_MFU)
    prefill = prefill_flops(replace(w, requests=rollouts)) / (PEAK_FLOPS * PREFILL_MFU)
    return Cost(prefill / 3600, generate / 3600, update / 3600)


def vote_workload(pixels: int) -> Workload:
    return Workload(PAIRS * 2, 2, VOTES // 2, pixels)


def eval_workload(pixels: int) -> Workload:
    return Workload(EVAL_IMAGES, 1, 1, pixels)


def print_table() -> None:
    print(f"7B example: per round {PAIRS:,} pairs x K={VOTES} votes, {TRAIN_ROWS:,} training")
    print(f"images x G={GENERATIONS}; eval of {EVAL_IMAGES:,} images x {EVALS} models;")
    print(f"{MEAN_COMPLETION} tokens per completion. GPU-hours on H100s (prefill, decode, update)")
    header = f"{'pixel caps':<15}{'stage':<22}{'prefill':>9}{'decode':>9}{'train':>9}{'total':>9}"
    print(header)
    for label, pixels in PIXEL_CAPS.items():
        rows = [
            ("vote, batch 8", inference_cost(vote_workload(pixels), 2 * 8)),
            ("vote, whole shard", inference_cost(vote_workload(pixels), None)),
            ("train (GRPO)", train_cost(pixels)),
            (f"eval x{EVALS}, batch 8", _times(inference_cost(eval_workload(pixels), 8), EVALS)),
            (f"eval x{EVALS}, whole", _times(inference_cost(eval_workload(pixels), None), EVALS)),
        ]
        for stage, cost in rows:
            print(
                f"{label:<15}{stage:<22}{cost.prefill_h:>9.2f}{cost.decode_h:>9.2f}"
                f"{cost.train_h:>9.2f}{cost.total:>9.2f}"
            )
        w = vote_workload(pixels)
        print(
            f"{'':<15}prompt {prompt_tokens(w):,} tokens; in flight: batch 8 "
            f"{in_flight(w, 2 * 8):,.0f}, whole shard {in_flight(w, None):,.0f} sequences"
        )
    ratio = prefill_flops(vote_workload(12_845_056)) / prefill_flops(vote_workload(401_408))
    tokens = prompt_tokens(vote_workload(12_845_056)) / prompt_tokens(vote_workload(401_408))
    print(f"vote prompt tokens, paper caps / ours: {tokens:.0f}x; prefill FLOPs: {ratio:.0f}x")


def _times(cost: Cost, k: int) -> Cost:
    return Cost(cost.prefill_h * k, cost.decode_h * k, cost.train_h * k)


# -- measured on CPU ------------------------------------------------------------------------------
MEASURE_PAIRS, MEASURE_VOTES, MEASURE_SIDE, MEASURE_TOKENS = 24, 8, 280, 16


def measure(model: str) -> None:
    import numpy as np
    from PIL import Image

    from evoquality.data.images import prepare_image
    from evoquality.engines import EngineImage, Sampling, derive_seed
    from evoquality.engines.vllm_engine import VLLMEngine

    cap = MEASURE_SIDE * MEASURE_SIDE
    rng = np.random.default_rng(0)
    pictures = [
        prepare_image(
            Image.fromarray(rng.integers(0, 256, (MEASURE_SIDE, MEASURE_SIDE, 3), np.uint8)),
            784,
            cap,
        )
        for _ in range(2 * MEASURE_PAIRS)
    ]
    images = [EngineImage(f"m{i}", p) for i, p in enumerate(pictures)]
    pairs = [(images[2 * i], images[2 * i + 1]) for i in range(MEASURE_PAIRS)]
    sampling = Sampling(1.0, 1.0, MEASURE_TOKENS, 0)
    n = MEASURE_VOTES // 2
    engine = VLLMEngine(model, 784, cap, reasoning=False)
    try:
        engine.compare(pairs[:2], n, sampling)  # warm-up
        print(f"\nmeasured: tiny model on vLLM CPU, {MEASURE_PAIRS} pairs x K={MEASURE_VOTES}, ")
        print(f"{MEASURE_SIDE}x{MEASURE_SIDE} images, {MEASURE_TOKENS} new tokens")
        print(
            f"{'calls':<14}{'pairs/s':>9}{'prompt/pair':>13}{'gen/pair':>10}{'cached':>8}"
            f"{'seq/call':>10}"
        )
        for label, size in (("8 pairs", 8), ("whole shard", MEASURE_PAIRS)):
            engine.llm.reset_prefix_cache()
            before = dict(engine.stats)
            engine.stats["max_sequences_per_call"] = 0
            started = time.perf_counter()
            for lo in range(0, MEASURE_PAIRS, size):
                part = pairs[lo : lo + size]
                both = part + [(b, a) for a, b in part]
                seeds = [derive_seed(0, "cost", lo + i) for i in range(len(both))]
                engine.compare(both, n, sampling, seeds)
            seconds = time.perf_counter() - started
            delta = {k: engine.stats[k] - before.get(k, 0) for k in engine.stats}
            print(
                f"{label:<14}{MEASURE_PAIRS / seconds:>9.1f}"
                f"{delta['prompt_tokens'] / MEASURE_PAIRS:>13.0f}"
                f"{delta['generated_tokens'] / MEASURE_PAIRS:>10.0f}"
                f"{delta['cached_prompt_tokens'] / max(1, delta['prompt_tokens']):>8.2f}"
                f"{engine.stats['max_sequences_per_call']:>10}"
            )
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="also run vLLM's CPU build")
    parser.add_argument("--model", default="tiny", help="model for --measure (default: tiny)")
    args = parser.parse_args()
    print_table()
    if args.measure:
        from evoquality.models import resolve_model
        from evoquality.stages.context import cache_dir

        measure(resolve_model(args.model, cache_dir()))


if __name__ == "__main__":
    main()
