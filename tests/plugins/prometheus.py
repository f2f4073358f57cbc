"""Pytest plugin: Debian's Prometheus server (and promtool) on 127.0.0.1.

`prometheus_server` (module-scoped) is a factory: `prometheus_server(scrape_configs,
rule_files=(), ...)` writes a config, starts `prometheus` on a free port with its own storage dir,
waits (bounded) until `/-/ready` answers and returns a `PrometheusServer` with query helpers; every
server it started is stopped at the end of the module. `promtool_bin` is the promtool path. Both
skip, with the reason, only when the binary is missing (`apt-get install -y prometheus`).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

START_TIMEOUT_S = 30.0
MISSING = "Debian's `prometheus` package is not installed (apt-get install -y prometheus)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.skip(f"no `{name}` binary: {MISSING}")
    return path


@dataclass
class PrometheusServer:
    url: str
    proc: subprocess.Popen
    log: Path

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; returns `data` or raises with Prometheus's error."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = at
        return self.api("query", **params)["result"]

    def query_range(self, expr: str, seconds: float = 60, step: float = 1) -> list[dict]:
        end = time.time()
        return self.api("query_range", query=expr, start=end - seconds, end=end, step=step)[
            "result"
        ]

    def wait_for(
        self, expr: str, check: Callable[[list[dict]], bool] = bool, timeout: float = 30
    ) -> list[dict]:
        """Poll an instant query until `check(result)` holds (bounded)."""
        deadline = time.monotonic() + timeout
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if check(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{expr!r} never met the condition within {timeout} s: {result}")


def _wait_ready(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(
        f"prometheus not ready at {url} within {START_TIMEOUT_S} s:\n{log.read_text()}"
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def promtool_bin() -> str:
    return _binary("promtool")


@pytest.fixture(scope="module")
def prometheus_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., PrometheusServer]]:
    binary = _binary("prometheus")
    procs: list[subprocess.Popen] = []

    def start(
        scrape_configs: Sequence[dict],
        rule_files: Sequence[Path] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
    ) -> PrometheusServer:
        workdir = tmp_path_factory.mktemp("prometheus")
        config = {
            "global": {
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "evaluation_interval": evaluation_interval,
            },
            "scrape_configs": list(scrape_configs),
            "rule_files": [str(p) for p in rule_files],
        }
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = workdir / "prometheus.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                    "--web.enable-lifecycle",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        procs.append(proc)
        _wait_ready(proc, url, log)
        return PrometheusServer(url=url, proc=proc, log=log)

    try:
        yield start
    finally:
        for proc in procs:
            _stop(proc)
