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

* GRPO rollouts in vLLM (``training.rollouts.engine: vllm``): `ROLLOUT_GPUS` of the pod's 8 GPUs
  run the server, which generates every rank's rollouts with continuous batching (all of a step's
  sequences in flight, no HF overhead); the other GPUs train; the trainer waits for the rollouts
  (synchronous GRPO), so the pod's 8 GPUs are billed for generation + weight sync + update.
  Weight sync per optimizer step: the built route writes and reloads the bf16 weights through a
  shared folder (`SYNC_DISK_BYTES_PER_S` each way); vLLM's NCCL weight transfer (not built)
  moves them at `SYNC_NCCL_BYTES_PER_S`. HF generate's slowdown over a memory-bound step
  (`HF_GENERATE_OVERHEAD`) is unmeasured on GPUs: the table prints the overhead at which both
  paths cost the same.

Measured (``--measure``, run with the vLLM venv's Python): the tiny model on vLLM's CPU build, a
vote workload of pairs of 280 x 280 images (100 tokens each) with K votes, in calls of 8 pairs
(both orders) vs the whole shard in one call: prompt and generated tokens per pair, the cached
share of prompt tokens, sequences in flight per call, pairs/s.

Measured (``--measure-rollouts``, run with the project venv's Python and the vLLM venv present):
one GRPO generation batch on the tiny model (`ROLLOUT_PROMPTS` images x G samples, the same
sampling settings, every sequence `ROLLOUT_TOKENS` long), by HF ``generate`` in the trainer's
process and by the vLLM rollout server (`evoquality.rollout_server`, its HTTP API as the trainer
calls it): generated tokens/s of each, side by side, and their ratio.

    python benchmarks/cost.py                        # the 7B table
    .venv-vllm/bin/python benchmarks/cost.py --measure   # plus the CPU vote measurement
    .venv/bin/python benchmarks/cost.py --measure-rollouts   # plus HF vs vLLM rollouts on CPU
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
POD_GPUS, ROLLOUT_GPUS = 8, 1  # a training pod; GPUs of it that serve vLLM rollouts
SYNC_DISK_BYTES_PER_S = 2e9  # write, then reload, the bf16 weights through a shared folder
SYNC_NCCL_BYTES_PER_S = 50e9  # vLLM's NCCL weight transfer over NVLink (not built)


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


@dataclass(frozen=True)
class TrainWall:
    """Wall-clock hours of one round's GRPO in one pod, by phase."""

    generate_h: float
    sync_h: float
    update_h: float

    @property
    def gpu_hours(self) -> float:
        return POD_GPUS * (self.generate_h + self.sync_h + self.update_h)


def grpo_steps() -> int:
    return TRAIN_ROWS * GENERATIONS // (TRAIN_GENERATE_BATCH * POD_GPUS)


def train_wall(pixels: int, rollouts: str, overhead: float = HF_GENERATE_OVERHEAD) -> TrainWall:
    """``rollouts``: "hf" (every GPU generates its rows), "vllm-disk" or "vllm-nccl"."""
    cost = train_cost(pixels)
    tokens = TRAIN_ROWS * GENERATIONS * MEAN_COMPLETION
    if rollouts == "hf":
        per_gpu = decode_seconds(tokens / POD_GPUS, TRAIN_GENERATE_BATCH, overhead)
        return TrainWall(per_gpu / 3600, 0.0, (cost.prefill_h + cost.train_h) / POD_GPUS)
    trainers = POD_GPUS - ROLLOUT_GPUS
    in_flight_ = min(
        TRAIN_GENERATE_BATCH * POD_GPUS,
        kv_capacity_sequences(Workload(TRAIN_ROWS, 1, GENERATIONS, pixels)),
    )
    steps = grpo_steps()
    generate = decode_seconds(tokens / ROLLOUT_GPUS, in_flight_ / ROLLOUT_GPUS)
    speed = SYNC_DISK_BYTES_PER_S / 2 if rollouts == "vllm-disk" else SYNC_NCCL_BYTES_PER_S
    sync = steps * WEIGHT_BYTES / speed
    return TrainWall(generate / 3600, sync / 3600, (cost.prefill_h + cost.train_h) / trainers)


def break_even_overhead(pixels: int, rollouts: str) -> float:
    """HF generate's overhead at which HF and vLLM rollouts cost the same GPU-hours."""
    from scipy.optimize import brentq

    target = train_wall(pixels, rollouts).gpu_hours
    return brentq(lambda o: train_wall(pixels, "hf", o).gpu_hours - target, 0.01, 1000)


def print_rollouts_table() -> None:
    print(
        f"\nGRPO rollouts, one round of the 7B example in one {POD_GPUS}-GPU pod "
        f"({grpo_steps():,} steps): wall hours by phase, pod GPU-hours"
    )
    print(f"{'pixel caps':<15}{'rollouts':<30}{'gen':>7}{'sync':>7}{'update':>8}{'GPU-h':>8}")
    for label, pixels in PIXEL_CAPS.items():
        rows = [
            (f"HF generate (overhead {HF_GENERATE_OVERHEAD:g}x)", train_wall(pixels, "hf")),
            (f"vLLM on {ROLLOUT_GPUS} GPU, disk sync", train_wall(pixels, "vllm-disk")),
            (f"vLLM on {ROLLOUT_GPUS} GPU, NCCL sync*", train_wall(pixels, "vllm-nccl")),
        ]
        for name, wall in rows:
            print(
                f"{label:<15}{name:<30}{wall.generate_h:>7.1f}{wall.sync_h:>7.1f}"
                f"{wall.update_h:>8.1f}{wall.gpu_hours:>8.0f}"
            )
        print(
            f"{'':<15}vLLM pays off once HF generate is slower than the memory-bound step by "
            f"{break_even_overhead(pixels, 'vllm-disk'):.1f}x (disk sync), "
            f"{break_even_overhead(pixels, 'vllm-nccl'):.1f}x (NCCL)"
        )
    print("* not built: vLLM's NCCL weight transfer needs GPUs (docs/training.md)")


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


def random_pictures(count: int, side: int) -> list:
    """``count`` seeded random RGB images of ``side`` x ``side``, prepared at that pixel cap."""
    import numpy as np
    from PIL import Image

    from evoquality.data.images import prepare_image

    rng = np.random.default_rng(0)
    return [
        prepare_image(
            Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8)), 784, side * side
        )
        for _ in range(count)
    ]


def measure(model: str) -> None:

    from evoquality.engines import EngineImage, Sampling, derive_seed
    from evoquality.engines.vllm_engine import VLLMEngine

    cap = MEASURE_SIDE * MEASURE_SIDE
    pictures = random_pictures(2 * MEASURE_PAIRS, MEASURE_SIDE)
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


ROLLOUT_PROMPTS, ROLLOUT_G, ROLLOUT_SIDE, ROLLOUT_TOKENS = 8, 8, 112, 64


def measure_rollouts(model: str) -> None:
    """HF generate vs the vLLM rollout server on one generation batch: generated tokens/s."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    from tempfile import TemporaryDirectory

    import torch
    from transformers import AutoModelForImageTextToText

    from evoquality.engines.vllm_env import vllm_python
    from evoquality.models import load_processor
    from evoquality.rollout_server import local_server
    from evoquality.training.grpo import scoring_messages
    from evoquality.training.rollouts import (
        RolloutClient,
        openai_messages,
        rows_of,
        sampling_body,
    )

    cap = ROLLOUT_SIDE * ROLLOUT_SIDE
    images = random_pictures(ROLLOUT_PROMPTS, ROLLOUT_SIDE)
    message = scoring_messages(reasoning=False)
    settings = {"temperature": 1.0, "top_k": 50, "max_tokens": ROLLOUT_TOKENS}

    processor = load_processor(model, 784, cap)
    hf = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32).eval()
    text = processor.apply_chat_template(message, add_generation_prompt=True, tokenize=False)
    rows = [img for img in images for _ in range(ROLLOUT_G)]
    inputs = processor(text=[text] * len(rows), images=rows, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    with torch.no_grad():
        hf.generate(**inputs, do_sample=True, max_new_tokens=2)  # warm-up
        started = time.perf_counter()
        out = hf.generate(
            **inputs,
            do_sample=True,
            max_new_tokens=ROLLOUT_TOKENS,
            min_new_tokens=ROLLOUT_TOKENS,  # every sequence runs the full length on both sides
            top_k=50,
            temperature=1.0,
        )
        hf_seconds = time.perf_counter() - started
    new = out[:, inputs["input_ids"].shape[1] :]
    pad = processor.tokenizer.pad_token_id
    hf_tokens = int((new != pad).sum())

    python = vllm_python()
    if python is None:
        raise SystemExit("--measure-rollouts needs the vLLM venv (make vllm-venv)")
    with TemporaryDirectory() as tmp:
        args = {
            "model": model,
            "revision": None,
            "min_pixels": 784,
            "max_pixels": cap,
            "max_completion_length": ROLLOUT_TOKENS,
            "seed": 0,
            "gpus": 0,
        }
        with local_server(python, args, Path(tmp) / "server.log", 600) as url:
            client = RolloutClient(url)

            def one(i: int, image) -> int:
                chat = [{**message[0], "content": [{"type": "image", "image": image},
                                                   message[0]["content"][1]]}]  # fmt: skip
                body = {
                    **sampling_body(n=ROLLOUT_G, seed=i, **settings),
                    "min_tokens": ROLLOUT_TOKENS,
                }
                return sum(len(r[1]) for r in rows_of(client.complete(openai_messages(chat), body),
                                                      ROLLOUT_G))  # fmt: skip

            with ThreadPoolExecutor(ROLLOUT_PROMPTS) as pool:
                list(pool.map(one, range(ROLLOUT_PROMPTS), images))  # warm-up
                started = time.perf_counter()
                vllm_tokens = sum(pool.map(one, range(ROLLOUT_PROMPTS), images))
                vllm_seconds = time.perf_counter() - started
    print(
        f"\nmeasured: one generation batch on the tiny model, CPU ({ROLLOUT_PROMPTS} images of "
        f"{ROLLOUT_SIDE}x{ROLLOUT_SIDE} x G={ROLLOUT_G}, {ROLLOUT_TOKENS} new tokens each, "
        "float32, top-k 50)"
    )
    print(f"{'rollouts':<30}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}")
    hf_rate, vllm_rate = hf_tokens / hf_seconds, vllm_tokens / vllm_seconds
    print(f"{'HF generate (trainer process)':<30}{hf_tokens:>8}{hf_seconds:>9.2f}{hf_rate:>10.0f}")
    print(
        f"{'vLLM rollout server (HTTP)':<30}{vllm_tokens:>8}{vllm_seconds:>9.2f}{vllm_rate:>10.0f}"
    )
    print(f"vLLM / HF tokens/s: {vllm_rate / hf_rate:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="also run vLLM's CPU build")
    parser.add_argument(
        "--measure-rollouts", action="store_true", help="also HF vs vLLM rollouts on CPU"
    )
    parser.add_argument("--model", default="tiny", help="model to measure (default: tiny)")
    args = parser.parse_args()
    print_table()
    print_rollouts_table()
    if args.measure or args.measure_rollouts:
        from evoquality.models import resolve_model
        from evoquality.stages.context import cache_dir

        model = resolve_model(args.model, cache_dir())
        if args.measure:
            measure(model)
        if args.measure_rollouts:
            measure_rollouts(model)


if __name__ == "__main__":
    main()
