"""Prompt texts (pairwise comparison, single-image scoring) and parsing of the model's answers.

Answers are read from the LAST ``\\boxed{...}`` or ``<answer>...</answer>`` of a completion (so any
reasoning before it is ignored); a completion without either tag is read as a whole, less its
``<think>...</think>`` blocks. Scores are lenient where VisualQuality-R1 is: the FIRST number of
the answer (``\\boxed{3.8/5}`` and ``Score: 4`` read 3.8 and 4), kept when it lies in [1, 5].
Comparisons are strict: only the phrases of the table below count ("Image 1" is the first image,
which a first-number rule would read as the answer 1 = the second), anything else is ``None``.
"""

from __future__ import annotations

import math
import re

CHOICE_FIRST = 0
CHOICE_SECOND = 1

_REASONING = (
    "First think about it step by step inside <think> </think> tags, then give the final answer "
    "inside \\boxed{}."
)
_DIRECT = "Give only the final answer inside \\boxed{}."

# Normalised answer text -> choice. "Image 1" is the FIRST image (0), not the answer "1".
_CHOICE_WORDS = {
    CHOICE_FIRST: (
        "0", "first", "first one", "first image", "image 1", "image one", "image a", "a",
        "1st", "1st image", "former",
    ),
    CHOICE_SECOND: (
        "1", "second", "second one", "second image", "image 2", "image two", "image b", "b",
        "2nd", "2nd image", "latter",
    ),
}  # fmt: skip
CHOICE_TABLE: dict[str, int] = {
    word: choice for choice, words in _CHOICE_WORDS.items() for word in words
}

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_BOXED = "\\boxed{"
_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm)\{(.*)\}$", re.DOTALL)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def comparison_prompt(reasoning: bool) -> str:
    """The two-image question: 0 if the first image has better quality, 1 if the second."""
    return (
        "You are shown two images. Which image has better visual quality (sharpness, noise, "
        "exposure, colour, compression artifacts)? Answer 0 if the first image is better, "
        f"1 if the second image is better. {_REASONING if reasoning else _DIRECT}"
    )


def scoring_prompt(reasoning: bool) -> str:
    """The single-image question: a quality score between 1 and 5 with two decimals."""
    return (
        "What is your overall rating on the quality of this image? Rate it as a float between "
        "1 and 5, rounded to two decimal places, where 1 is the lowest quality and 5 the highest. "
        f"{_REASONING if reasoning else _DIRECT}"
    )


def prompts_fingerprint() -> str:
    """A short hash of every prompt text: what a model trained on these prompts records."""
    import hashlib

    texts = [f(r) for f in (comparison_prompt, scoring_prompt) for r in (False, True)]
    return hashlib.sha256("\x1f".join(texts).encode()).hexdigest()[:16]


def answer_text(choice: int) -> str:
    """The answer a well-behaved judge emits for ``choice`` (used by the simulated engine)."""
    if choice not in (CHOICE_FIRST, CHOICE_SECOND):
        raise ValueError(f"choice must be 0 or 1, got {choice!r}")
    return f"\\boxed{{{choice}}}"


def extract_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{}`` / ``<answer>`` tag; without one, the text outside its
    ``<think>`` blocks.

    ``None`` when the last ``\\boxed{`` or a ``<think>`` is never closed (a truncated completion).
    """
    boxed_at = text.rfind(_BOXED)
    tags = list(_ANSWER_TAG.finditer(text))
    tag = tags[-1] if tags else None
    if tag is not None and tag.start() > boxed_at:
        return tag.group(1)
    if boxed_at < 0:
        outside = _THINK.sub(" ", text)
        return None if "<think>" in outside.lower() else outside
    depth, start = 1, boxed_at + len(_BOXED)
    for pos in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[pos], 0)
        if depth == 0:
            return text[start:pos]
    return None


def _normalise(answer: str) -> str:
    answer = answer.strip().strip("$").strip()
    while match := _TEXT_WRAPPER.match(answer):
        answer = match.group(1).strip()
    answer = " ".join(answer.lower().strip(" \t\n,:;!?\"'`*()[]").rstrip(".").split())
    return answer.removeprefix("the ").removeprefix("answer: ")


def parse_choice(text: str) -> int | None:
    """0 = the first image is better, 1 = the second, ``None`` = abstain / unparseable."""
    answer = extract_answer(text)
    return None if answer is None else CHOICE_TABLE.get(_normalise(answer))


def parse_score(text: str, low: float = 1.0, high: float = 5.0) -> float | None:
    """The first number of the answer when it lies within ``[low, high]``, else ``None``."""
    answer = extract_answer(text)
    if answer is None:
        return None
    match = _NUMBER.search(answer)
    if match is None:
        return None
    score = float(match.group())
    return score if math.isfinite(score) and low <= score <= high else None
