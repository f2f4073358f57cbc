"""Pytest plugin: a real S3 endpoint (moto's server) on 127.0.0.1 and fresh buckets.

`s3_server` (session) starts `moto_server` on a free port and stops it at the end; it does not touch
os.environ but returns the endpoint and the environment a client needs. `s3_bucket` (function)
creates a uniquely named bucket, applies that environment with monkeypatch and yields its URI.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_START_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    env: dict[str, str]  # credentials, region and endpoint for clients and subprocesses


@dataclass(frozen=True)
class S3Bucket:
    bucket: str
    uri: str  # s3://<bucket>/prefix
    endpoint_url: str
    env: dict[str, str]  # as S3Server.env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    exe = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*exe, "-H", "127.0.0.1", "-p", str(port)]


def _wait_until_up(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer at {url} within {_START_TIMEOUT_S} s")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    logdir = Path(tempfile.mkdtemp(prefix="moto-"))
    log = logdir / "moto_server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(_server_command(port), stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(proc, endpoint + "/", log)
        empty = logdir / "empty-aws-config"
        empty.touch()
        yield S3Server(
            endpoint_url=endpoint,
            env={
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL_S3": endpoint,
                # Never read the host's AWS profile or credentials.
                "AWS_CONFIG_FILE": str(empty),
                "AWS_SHARED_CREDENTIALS_FILE": str(empty),
            },
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(logdir, ignore_errors=True)


@pytest.fixture(scope="session")
def _s3_admin(s3_server: S3Server):
    """One client for creating buckets (client construction costs ~0.1 s)."""
    import boto3

    return boto3.session.Session(
        aws_access_key_id=s3_server.env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_server.env["AWS_SECRET_ACCESS_KEY"],
        region_name=s3_server.env["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=s3_server.endpoint_url)


@pytest.fixture
def s3_bucket(s3_server: S3Server, _s3_admin, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"evoq-test-{uuid.uuid4().hex[:16]}"
    _s3_admin.create_bucket(Bucket=bucket)
    return S3Bucket(
        bucket=bucket,
        uri=f"s3://{bucket}/prefix",
        endpoint_url=s3_server.endpoint_url,
        env=s3_server.env,
    )
