"""Prompt texts and answer parsing: the explicit choice table, last-tag rule, score ranges."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evoquality.prompts import (
    CHOICE_FIRST,
    CHOICE_SECOND,
    answer_text,
    comparison_prompt,
    parse_choice,
    parse_score,
    scoring_prompt,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{0}", CHOICE_FIRST),
        ("\\boxed{1}", CHOICE_SECOND),
        ("  \\boxed{ 1 }  \n", CHOICE_SECOND),
        ("<answer>0</answer>", CHOICE_FIRST),
        ("<ANSWER> 1 </ANSWER>", CHOICE_SECOND),
        ("1", CHOICE_SECOND),
        ("\\boxed{Image 1}", CHOICE_FIRST),  # image 1 is the FIRST image, not the answer "1"
        ("\\boxed{Image 2}", CHOICE_SECOND),
        ("<answer>The first image.</answer>", CHOICE_FIRST),
        ("<answer>the second image</answer>", CHOICE_SECOND),
        ("\\boxed{\\text{Image B}}", CHOICE_SECOND),
        ("$\\boxed{A}$", CHOICE_FIRST),
        ("**First**", CHOICE_FIRST),
        ("Second", CHOICE_SECOND),
        ("<think>Image 2 is blurry, so \\boxed{0} at first sight...</think> \\boxed{1}", 1),
        ("<think>maybe 1</think><answer>0</answer>", CHOICE_FIRST),
        ("<think>The second one is noisy.</think>The first image", CHOICE_FIRST),  # no tag
        ("\\boxed{1} ... on reflection <answer>0</answer>", CHOICE_FIRST),
        ("<answer>1</answer> final: \\boxed{0}", CHOICE_FIRST),
    ],
)
def test_parse_choice_table(text, expected):
    assert parse_choice(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2",  # neither 0 nor 1: could mean "image 2", never guessed
        "\\boxed{2}",
        "\\boxed{both}",
        "\\boxed{0 or 1}",
        "\\boxed{1",  # truncated completion
        "I think the first image is better",  # free text without a tag
        "<answer></answer>",
        "\\boxed{equal}",
    ],
)
def test_ambiguous_or_unparseable_choices_abstain(text):
    assert parse_choice(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\\boxed{3.45}", 3.45),
        ("<answer> 4 </answer>", 4.0),
        ("<think>about 2</think> \\boxed{2.50}", 2.5),
        ("$\\boxed{1.00}$", 1.0),
        ("\\boxed{5}", 5.0),
        ("3.7", 3.7),
        ("\\boxed{\\text{3.20}}", 3.2),
        # lenient as VisualQuality-R1: the first number of the answer block
        ("\\boxed{3.8/5}", 3.8),
        ("Score: 4", 4.0),
        ("<think>1 is poor, 5 is great</think>I rate it 3.5 out of 5", 3.5),
        ("<answer>about 2.25, since noisy</answer>", 2.25),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{5.01}",
        "\\boxed{0.99}",
        "\\boxed{nan}",
        "\\boxed{6/10}",  # the first number is out of range: no rescaling
        "\\boxed{good}",
        "<think>it is a 4</think>",  # a number only inside the reasoning
        "<think>truncated 4",
        "",
        "x",
    ],
)
def test_unusable_scores_are_none(text):
    assert parse_score(text) is None


def test_parse_score_uses_the_given_range():
    assert parse_score("\\boxed{7.5}", low=0.0, high=10.0) == 7.5
    assert parse_score("\\boxed{0.5}", low=1.0, high=5.0) is None
    assert parse_score("\\boxed{.5}", low=0.0, high=1.0) == 0.5


@settings(max_examples=200, deadline=None)
@given(st.floats(1.0, 5.0))
def test_two_decimal_scores_round_trip(score):
    assert parse_score(f"<think>...</think>\\boxed{{{score:.2f}}}") == pytest.approx(
        round(score, 2)
    )


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parsers_never_raise(text):
    assert parse_choice(text) in (0, 1, None)
    score = parse_score(text)
    assert score is None or 1.0 <= score <= 5.0


def test_answer_text_round_trips():
    for choice in (CHOICE_FIRST, CHOICE_SECOND):
        assert parse_choice(answer_text(choice)) == choice
    with pytest.raises(ValueError):
        answer_text(2)


@pytest.mark.parametrize("reasoning", [False, True])
def test_prompts_state_the_answer_convention(reasoning):
    comparison = comparison_prompt(reasoning)
    assert "0 if the first image is better" in comparison
    assert "1 if the second" in comparison
    scoring = scoring_prompt(reasoning)
    assert "between 1 and 5" in scoring and "two decimal" in scoring
    for prompt in (comparison, scoring):
        assert "\\boxed{}" in prompt
        assert ("<think>" in prompt) == reasoning
