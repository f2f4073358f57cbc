"""What the tiny model's format warm-up does to the image pathway (docs/self-evolution.md,
"Seventh search").

    HF_HUB_OFFLINE=1 python benchmarks/tiny_warmup.py --seeds 0 1 2 3

For each seed, builds the tiny model three ways (no warm-up; the default 100-step warm-up; the
same warm-up with the vision tower left as initialised, `make_tiny_model(warmup_tower=False)`)
and prints, on 16 fixed random pictures under the scoring prompt:

* the vision tower's output norm per image token, as a ratio to the text embeddings' norm;
* the answer position's image sensitivity: the spread over the pictures of the last hidden state
  at the position that answers, relative to its norm (0 = the answer cannot depend on the image).

No training beyond the warm-up, one thread, ~15 s per build.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

PICTURES = 16
# label: (warm-up steps, whether the warm-up trains the vision tower)
BUILDS = {
    "no warm-up": (0, True),
    "warm-up": (100, True),
    "warm-up, tower as initialised": (100, False),
}


def image_pathway(path: Path) -> tuple[float, float]:
    """(vision-token norm / text-embedding norm, answer position's relative spread over images)."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from evoquality.pretrain import answer_prompt

    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    rng = np.random.default_rng(123)
    pictures = [
        Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)) for _ in range(PICTURES)
    ]
    text = answer_prompt(processor, 1) + "\\boxed{"
    inputs = processor(
        text=[text] * PICTURES, images=[[p] for p in pictures], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        answer = model(**inputs, output_hidden_states=True).hidden_states[-1][:, -1]
        tokens = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        tokens = torch.cat(list(getattr(tokens, "pooler_output", tokens)))
        text_norm = model.model.get_input_embeddings().weight.norm(dim=1).mean()
    ratio = float(tokens.norm(dim=-1).mean() / text_norm)
    spread = float(answer.std(0).norm() / answer.norm(dim=1).mean())
    return ratio, spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    import torch

    from evoquality.tiny_model import make_tiny_model

    torch.set_num_threads(1)
    print("| seed | build | vision-token norm / text-embedding norm | answer spread over images |")
    print("|---|---|---|---|")
    for seed in args.seeds:
        for label, (steps, tower) in BUILDS.items():
            with tempfile.TemporaryDirectory() as tmp:
                path = make_tiny_model(
                    Path(tmp) / "tiny",
                    seed=seed,
                    image_size=56,
                    warmup_steps=steps,
                    patch_init="frequency",
                    warmup_tower=tower,
                )
                ratio, spread = image_pathway(path)
            print(f"| {seed} | {label} | {ratio:.1f} | {spread:.4f} |", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
