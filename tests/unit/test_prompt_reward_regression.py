"""Regression pins: the exact prompt texts, and the rewards of hand-written completions computed
here from the fidelity formula (docs/algorithms.md), independently of `evoquality.reward`."""

import math

import pytest

from evoquality import prompts
from evoquality.training.rewards import pair_rewards

REASONING = (
    "First think about it step by step inside <think> </think> tags, then give the final answer "
    "inside \\boxed{}."
)
DIRECT = "Give only the final answer inside \\boxed{}."
COMPARE = (
    "You are shown two images. Which image has better visual quality (sharpness, noise, exposure, "
    "colour, compression artifacts)? Answer 0 if the first image is better, 1 if the second image "
    "is better. "
)
SCORE = (
    "What is your overall rating on the quality of this image? Rate it as a float between 1 and 5, "
    "rounded to two decimal places, where 1 is the lowest quality and 5 the highest. "
)


@pytest.mark.parametrize("reasoning", [True, False])
def test_prompt_texts_are_pinned(reasoning):
    suffix = REASONING if reasoning else DIRECT
    assert prompts.comparison_prompt(reasoning) == COMPARE + suffix
    assert prompts.scoring_prompt(reasoning) == SCORE + suffix


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _mean_var(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def test_rewards_of_hand_written_completions():
    # Image A is better than B (hard label p*_AB = 1). With reasoning, the format is
    # <think>...</think> then a parseable \boxed{score}.
    a_texts = [
        "<think>Sharp, little noise.</think> \\boxed{4.0}",  # think + boxed: format 1
        "\\boxed{3.0}",  # boxed only: parses, format 0
        "<answer>3.5</answer>",  # answer tag: parses, format 0 (no box)
        "it looks fine",  # garbage: reward 0
    ]
    b_texts = [
        "<think>Blurry.</think> \\boxed{2.0}",
        "<think>Soft.</think> \\boxed{2.5}",
        "<think>Noisy.</think> \\boxed{1.5/5}",  # lenient: the first number, 1.5
        "<think>Dark.</think> Score: 2",  # lenient: 2.0; format 0 (no box)
    ]
    rewards, metrics = pair_rewards(
        a_texts + b_texts,
        ["A"] * 4 + ["B"] * 4,
        ["B"] * 4 + ["A"] * 4,
        [1.0] * 4 + [0.0] * 4,
        format_weight=1.0,
        reasoning=True,
    )
    (mean_a, var_a), (mean_b, var_b) = _mean_var([4.0, 3.0, 3.5]), _mean_var([2.0, 2.5, 1.5, 2.0])
    scale = math.sqrt(var_a + var_b + 1e-6)
    fidelity_a = [math.sqrt(_phi((q - mean_b) / scale)) for q in (4.0, 3.0, 3.5)] + [0.0]
    fidelity_b = [math.sqrt(1.0 - _phi((q - mean_a) / scale)) for q in (2.0, 2.5, 1.5, 2.0)]
    formats = [1.0, 0.0, 0.0, 0.0] + [1.0, 1.0, 1.0, 0.0]
    expected = [f + g for f, g in zip(fidelity_a + fidelity_b, formats, strict=True)]
    assert rewards.tolist() == pytest.approx(expected, abs=1e-9)
    assert metrics["parse_rate"] == pytest.approx(7 / 8)
