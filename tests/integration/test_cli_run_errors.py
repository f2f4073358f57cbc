"""`evoquality run` on bad input: one clear message, a non-zero exit code, nothing written."""

import subprocess
import sys

import pytest


def run_cli(*args, cwd):
    command = [sys.executable, "-m", "evoquality.cli", "run", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_missing_manifest(tmp_path):
    result = run_cli("nope.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "nope.yaml: no such manifest" in result.stderr
    assert "Traceback" not in result.stderr


def test_yaml_error_names_line_and_column(tmp_path):
    (tmp_path / "bad.yaml").write_text("kind: EvoQualityRun\nspec:\n  data: {manifest: x\n")
    result = run_cli("bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid YAML at line" in result.stderr and "column" in result.stderr


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("voting: {votesPerPair: 0}", "spec.voting.votesPerPair"),
        ("rounds: many", "spec.rounds"),
        ("ranking: {labels: majority}", "spec.ranking.labels"),
    ],
)
def test_invalid_field_is_named(tmp_path, spec, field):
    text = (
        "apiVersion: evoquality.io/v1alpha1\nkind: EvoQualityRun\nmetadata: {name: x}\n"
        "spec:\n  data: {manifest: pool.csv}\n  storage: {uri: runs}\n  " + spec + "\n"
    )
    (tmp_path / "run.yaml").write_text(text)
    result = run_cli("run.yaml", "--workdir", "w", cwd=tmp_path)
    assert result.returncode == 2
    assert field in result.stderr
    assert not (tmp_path / "w").exists()


def test_workdir_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    manifest = tmp_path / "run.yaml"
    manifest.write_text(
        "apiVersion: evoquality.io/v1alpha1\nkind: EvoQualityRun\nmetadata: {name: x}\n"
        "spec:\n  data: {manifest: pool.csv}\n  storage: {uri: runs}\n"
    )
    result = run_cli(str(manifest), "--workdir", str(tmp_path / "file" / "sub"), cwd=tmp_path)
    assert result.returncode == 2
    assert "is not writable" in result.stderr
