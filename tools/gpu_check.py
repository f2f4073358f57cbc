"""GPU check (`make gpu-check`): what the CPU test suite cannot execute, in minutes, offline.

On a lent GPU machine (no network; a copy of this repository with its .venv): builds the tiny
model, then checks

1. CUDA and bf16: the transformers engine loads the model on ``cuda`` in bfloat16, samples votes
   and greedy scores, and its teacher-forced log-probabilities stay within `BF16_TOLERANCE` nats of
   a float32 forward pass on the same GPU;
2. one GRPO step (TRL, no DeepSpeed) on CUDA with bf16 autocast: finite loss, a saved model.

Prints one JSON line of results and exits 0 when every check passed (1 otherwise; 2 without
CUDA). Sized for a 15-minute lease: ~1-3 minutes after the imports.

    .venv/bin/python tools/gpu_check.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

MIN_PIXELS, MAX_PIXELS = 784, 3136
BF16_TOLERANCE = 0.25  # nats per token: bf16 keeps ~3 significant digits of the logits


def images(count: int, seed: int = 0) -> list:
    import numpy as np
    from PIL import Image

    from evoquality.data.images import prepare_image

    rng = np.random.default_rng(seed)
    return [
        prepare_image(
            Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)),
            MIN_PIXELS,
            MAX_PIXELS,
        )
        for _ in range(count)
    ]


def check_engine(model_dir: Path) -> dict:
    import torch

    from evoquality import prompts
    from evoquality.engines import EngineImage, Sampling
    from evoquality.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(model_dir), MIN_PIXELS, MAX_PIXELS, dtype="bfloat16")
    parameter = next(engine.model.parameters())
    items = [EngineImage(f"i{i}", img) for i, img in enumerate(images(8))]
    pairs = [(items[i], items[i + 1]) for i in range(0, 8, 2)]
    started = time.perf_counter()
    votes = engine.compare(pairs, 4, Sampling(1.0, 1.0, 32, 0))
    scores = engine.score(items, 2, Sampling(0.0, 1.0, 32, 0))
    seconds = time.perf_counter() - started
    question = prompts.comparison_prompt(True)
    inputs = engine.inputs([items[0].image, items[1].image], question).to(engine.device)
    with torch.no_grad():
        bf16 = torch.log_softmax(engine.model(**inputs).logits.float(), -1)
        engine.model.float()
        fp32 = torch.log_softmax(engine.model(**inputs).logits.float(), -1)
    gap = float((bf16 - fp32).abs().max())
    engine.close()
    return {
        "device": str(parameter.device),
        "dtype": str(parameter.dtype),
        "votes_ok": len(votes) == 4 and all(len(row) == 4 for row in votes),
        "greedy_ok": all(len(set(row)) == 1 for row in scores),
        "generate_s": round(seconds, 2),
        "bf16_vs_fp32_max_logprob_gap": round(gap, 4),
        "ok": parameter.device.type == "cuda"
        and parameter.dtype == torch.bfloat16
        and gap < BF16_TOLERANCE,
    }


def check_grpo(model_dir: Path, out: Path) -> dict:
    from evoquality.spec import parse_spec
    from evoquality.training import TrainRow, train_round

    spec = parse_spec(
        {
            "data": {"manifest": "unused.csv"},
            "storage": {"uri": str(out / "unused")},
            "model": {
                "base": str(model_dir),
                "engine": "transformers",
                "dtype": "bfloat16",
                "minPixels": MIN_PIXELS,
                "maxPixels": MAX_PIXELS,
            },
            "training": {
                "numGenerations": 2,
                "perDeviceBatchSize": 4,
                "maxSteps": 1,
                "maxCompletionLength": 24,
                "saveSteps": 1,
                "learningRate": 1e-4,
                "scaleRewards": "batch",
                "deepspeed": "none",
                "gradientCheckpointing": True,
            },
        }
    )
    pictures = images(8, seed=1)
    rows = []
    for pair in range(4):
        a, b = f"a{pair}", f"b{pair}"
        rows.append(TrainRow(a, pictures[2 * pair], pair, b, 1.0))
        rows.append(TrainRow(b, pictures[2 * pair + 1], pair, a, 0.0))
    started = time.perf_counter()
    summary = train_round(spec, str(model_dir), rows, out / "grpo")
    finite = all(math.isfinite(summary[k]) for k in ("loss", "reward_mean"))
    return {
        "steps": summary["steps"],
        "bf16": summary["bf16"],
        "loss": summary["loss"],
        "seconds": round(time.perf_counter() - started, 1),
        "ok": summary["steps"] == 1
        and summary["bf16"] is True
        and finite
        and (out / "grpo" / "final").is_dir(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"ok": False, "error": "no CUDA device"}))
        return 2
    from evoquality.tiny_model import build_tiny_model_atomic

    work = args.keep or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    started = time.perf_counter()
    model_dir = build_tiny_model_atomic(work / "tiny", seed=0)
    results = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "tiny_model_s": round(time.perf_counter() - started, 1),
        "engine": check_engine(Path(model_dir)),
        "grpo": check_grpo(Path(model_dir), work),
    }
    results["ok"] = results["engine"]["ok"] and results["grpo"]["ok"]
    print(json.dumps(results))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
