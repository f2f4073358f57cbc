"""Every method default names its source, docs/training.md tabulates them, and the settings the
paper states carry the paper's values (in the defaults and in the 7B example)."""

import json
import re
from pathlib import Path

import pytest

from evoquality.spec import load_run
from evoquality.spec_sources import SOURCES, source_of, sourced_defaults

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| `([A-Za-z.]+)` \| `(.*)` \| ([^|]+) \|")
# What the paper states (shared/ARCHITECTURE.md), by spec path.
PAPER = {
    "rounds": 2,
    "voting.votesPerPair": 32,
    "voting.pairsPerRound": 20000,
    "voting.sampler": "random",
    "ranking.labels": "hard",
    "training.numGenerations": 32,
    "training.beta": 0.05,
    "training.learningRate": 3e-7,
    "data.augmentation.fromRound": 1,  # round 2 adds synthetic distortions
    "training.lora.enabled": False,  # full fine-tune
}


def docs_table() -> dict[str, tuple[object, str]]:
    rows = {}
    for line in (ROOT / "docs" / "training.md").read_text().splitlines():
        if match := ROW.match(line):
            path, default, source = match.groups()
            rows[path] = (json.loads(default), source.strip())
    return rows


def test_every_default_has_a_source_and_the_docs_table_matches():
    code = sourced_defaults()
    assert all(source in SOURCES for _, source in code.values()), [
        path for path, (_, source) in code.items() if source is None
    ]
    assert docs_table() == code


def test_the_paper_stated_settings_carry_the_papers_values():
    code = sourced_defaults()
    assert {path: code[path] for path in PAPER} == {path: (v, "paper") for path, v in PAPER.items()}


def test_the_7b_example_runs_the_paper_settings():
    spec = load_run(ROOT / "examples" / "qwen2.5-vl-7b.yaml").spec.model_dump(by_alias=True)
    for path, value in PAPER.items():
        node = spec
        for part in path.split("."):
            node = node[part]
        assert node == value, path


@pytest.mark.parametrize(
    ("description", "source"),
    [
        ("KL coefficient. [paper]", "paper"),
        ("x [our choice: operational]", "our choice"),
        ("x [VisualQuality-R1: random]", "VisualQuality-R1"),
        ("[1, 5] range, no tag", None),
        ("[paper] not at the end", None),
        (None, None),
    ],
)
def test_source_tags_are_read_from_the_end_of_a_description(description, source):
    assert source_of(description) == source
