"""The vLLM rollout server: its command, and a local one for runs without a cluster.

The server is vLLM's own OpenAI-compatible server (``vllm.entrypoints.openai.api_server``) with
its development endpoints on (``VLLM_SERVER_DEV_MODE=1``: ``/collective_rpc``, the cache resets,
``/update_weight_version``, ``/weight_info``). The operator runs `server_args` as the train pod's
native sidecar, and `LocalRolloutServer` runs the same arguments as a subprocess of the train
stage (the embedded runner, `evoquality stage train`), from the vLLM venv.

It starts on round r's policy (vLLM refuses to reload weights into a model it started with
``--load-format dummy``); the trainer's first weight sync, before the first rollout, sends the
weights it trains from, so a resumed attempt's server holds the resumed weights
(`evoquality.training.rollouts`). It listens on 127.0.0.1: only the pod's own containers reach
its development endpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from evoquality.engines.vllm_engine import CPU_KV_CACHE_GIB, processor_kwargs

PORT = 8000
SERVED_MODEL = "policy"
SERVER_ENV = "EVOQUALITY_ROLLOUT_SERVER"  # the server's URL, set where something else started it
SYNC_DIR_ENV = "EVOQUALITY_ROLLOUT_SYNC_DIR"  # the folder both sides see, for weight syncs
IMAGE_TOKEN_PIXELS = 28 * 28  # one merged Qwen2.5-VL visual token
PROMPT_TEXT_TOKENS = 512  # chat template + scoring question, generous


class RolloutServerError(RuntimeError):
    pass


def max_model_len(max_pixels: int, max_completion_length: int) -> int:
    """Context the server needs: one image's tokens, the question, the completion."""
    return max_pixels // IMAGE_TOKEN_PIXELS + PROMPT_TEXT_TOKENS + max_completion_length


def server_args(
    *,
    model: str,
    revision: str | None,
    min_pixels: int,
    max_pixels: int,
    max_completion_length: int,
    seed: int,
    gpus: int,
    port: int = PORT,
) -> list[str]:
    """Arguments after ``python``: GPU settings with ``gpus >= 1`` (tensor parallel over them),
    the CPU build's settings with 0 (`evoquality.engines.vllm_engine.platform_kwargs`)."""
    args = [
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        SERVED_MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--generation-config",
        "vllm",
        "--logprobs-mode",
        "processed_logprobs",
        "--max-model-len",
        str(max_model_len(max_pixels, max_completion_length)),
        "--limit-mm-per-prompt",
        json.dumps({"image": 1, "video": 0}),
        "--mm-processor-kwargs",
        json.dumps(processor_kwargs(min_pixels, max_pixels)),
        "--seed",
        str(seed),
    ]
    if revision:
        args += ["--revision", revision]
    if gpus:
        return [*args, "--dtype", "bfloat16", "--tensor-parallel-size", str(gpus)]
    return [*args, "--dtype", "float32", "--enforce-eager", "--no-enable-chunked-prefill"]


def spec_server_args(spec, model: str, gpus: int) -> dict:
    """`server_args`'s keywords (but the port) for a run's spec and the policy's folder."""
    return {
        "model": model,
        "revision": spec.model.revision,
        "min_pixels": spec.model.min_pixels,
        "max_pixels": spec.model.max_pixels,
        "max_completion_length": spec.training.max_completion_length,
        "seed": spec.seed,
        "gpus": gpus,
    }


def exec_server(spec, model: str, gpus: int, port: int = PORT) -> None:
    """Replace this process by the server (the sidecar's command: signals reach vLLM)."""
    import sys

    argv = [sys.executable, *server_args(**spec_server_args(spec, model, gpus), port=port)]
    os.execve(sys.executable, argv, {**os.environ, **server_env(gpus)})


def server_env(gpus: int) -> dict[str, str]:
    """Environment of the server process (added to the inherited one)."""
    env = {"VLLM_SERVER_DEV_MODE": "1", "VLLM_NO_USAGE_STATS": "1"}
    if not gpus:
        env["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get(
            "VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB)
        )
    return env


def url(port: int = PORT) -> str:
    return f"http://127.0.0.1:{port}"


def wait_healthy(
    base_url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True, poll_s: float = 1.0
) -> float:
    """Poll ``/health`` until it answers 200; seconds waited. Raises when ``alive()`` turns
    false (the process died) or after ``timeout_s``."""
    import requests

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not alive():
            raise RolloutServerError("the vLLM rollout server exited while starting")
        try:
            if requests.get(f"{base_url}/health", timeout=5).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(poll_s)
    raise RolloutServerError(f"the vLLM rollout server at {base_url} not healthy in {timeout_s} s")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def local_server(
    python: str, args_without_port: Mapping, log_path: Path, timeout_s: float
) -> Iterator[str]:
    """Start the server from ``python`` (the vLLM venv's) on a free port, yield its URL once
    healthy, and stop its whole process group on exit, success or failure."""
    port = _free_port()
    argv = [python, *server_args(**args_without_port, port=port)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **server_env(args_without_port["gpus"])},
            start_new_session=True,
        )
        try:
            base = url(port)
            try:
                wait_healthy(base, timeout_s, alive=lambda: proc.poll() is None)
            except RolloutServerError as err:
                tail = log_path.read_text(errors="replace").splitlines()[-20:]
                message = f"{err}; last lines of {log_path}:\n" + "\n".join(tail)
                raise RolloutServerError(message) from None
            yield base
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen, grace_s: float = 30) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)
