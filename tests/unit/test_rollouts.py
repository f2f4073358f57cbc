"""vLLM rollouts without a server: the trainer's request and answer handling, the server's
command, the spec's rules and the train Job's sidecar (executed in tests/e2e/test_vllm_rollouts.py
and tests/e2e/test_executed_rollouts.py)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from evoquality_operator import jobs
from evoquality_operator.reconcile import StageKey
from PIL import Image

from evoquality import rollout_server
from evoquality.spec import parse_spec
from evoquality.training import rollouts

BASE = {"data": {"manifest": "s3://b/pool.csv"}, "storage": {"uri": "s3://b/runs"}}


def picture(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 56, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def prompt(image: Image.Image, text: str = "Rate it.") -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": text}],
        }
    ]


def test_equal_prompts_form_runs_and_different_pixels_or_texts_do_not():
    a, b = picture(0), picture(1)
    keys = [
        rollouts.prompt_key(p) for p in (prompt(a), prompt(a.copy()), prompt(b), prompt(b, "x"))
    ]
    assert rollouts.prompt_runs(keys) == [(0, 2), (2, 1), (3, 1)]
    assert rollouts.prompt_runs([]) == []
    assert rollouts.prompt_runs(["k", "j", "k"]) == [(0, 1), (1, 1), (2, 1)]  # adjacent only


def test_images_travel_as_lossless_data_urls():
    image = picture(2)
    (message,) = rollouts.openai_messages(prompt(image))
    url = message["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert message["content"][1] == {"type": "text", "text": "Rate it."}
    with pytest.raises(rollouts.RolloutError, match="unsupported"):
        rollouts.openai_messages([{"role": "user", "content": [{"type": "video"}]}])


def test_sampling_body_maps_the_trainers_settings():
    body = rollouts.sampling_body(n=4, temperature=1.0, top_k=0, max_tokens=12, seed=5)
    assert body["top_k"] == -1 and body["n"] == 4 and body["max_tokens"] == 12
    assert body["logprobs"] is True and body["return_token_ids"] is True
    assert (
        rollouts.sampling_body(n=1, temperature=1.0, top_k=50, max_tokens=1, seed=0)["top_k"] == 50
    )
    seeds = {rollouts.request_seed(0, step, rank, run) for step in range(3) for rank in range(2)
             for run in range(4)}  # fmt: skip
    assert len(seeds) == 24 and all(0 <= s < 2**31 for s in seeds)


def answer(n: int, lengths=None) -> dict:
    lengths = lengths or [2] * n
    return {
        "prompt_token_ids": [1, 2, 3],
        "choices": [
            {
                "index": i,
                "token_ids": list(range(length)),
                "logprobs": {"content": [{"logprob": -0.5}] * 2},
            }
            for i, length in reversed(list(enumerate(lengths)))
        ],
    }


def test_answers_become_rows_in_sample_order_and_bad_answers_raise():
    rows = rollouts.rows_of(answer(2), 2)
    assert rows == [([1, 2, 3], [0, 1], [-0.5, -0.5])] * 2
    with pytest.raises(rollouts.RolloutError, match="1 of 2"):
        rollouts.rows_of({"prompt_token_ids": [1], "choices": answer(1)["choices"]}, 2)
    with pytest.raises(rollouts.RolloutError, match="3 sampled tokens but 2"):
        rollouts.rows_of(answer(1, [3]), 1)


def test_server_command_cpu_and_gpu():
    settings = {
        "model": "/m",
        "revision": None,
        "min_pixels": 784,
        "max_pixels": 28 * 28 * 64,
        "max_completion_length": 256,
        "seed": 3,
    }
    cpu = rollout_server.server_args(**settings, gpus=0, port=9000)
    assert cpu[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(cpu[2::2], cpu[3::2], strict=False))
    assert flags["--port"] == "9000" and flags["--host"] == "127.0.0.1"
    assert flags["--logprobs-mode"] == "processed_logprobs"
    assert flags["--max-model-len"] == str(64 + 512 + 256)
    assert json.loads(flags["--mm-processor-kwargs"])["size"]["longest_edge"] == 28 * 28 * 64
    assert "--enforce-eager" in cpu and "--no-enable-chunked-prefill" in cpu
    gpu = rollout_server.server_args(**settings, gpus=2)
    assert gpu[-4:] == ["--dtype", "bfloat16", "--tensor-parallel-size", "2"]
    assert rollout_server.server_env(0)["VLLM_SERVER_DEV_MODE"] == "1"
    assert "VLLM_CPU_KVCACHE_SPACE" not in rollout_server.server_env(1)


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"lora": {"enabled": True}}, "lora.enabled"),
        ({"nodes": 2}, "nodes > 1"),
        ({"gpusPerNode": 1}, "must exceed rollouts.gpus"),
    ],
)
def test_unbuilt_vllm_rollout_settings_are_refused(training, message):
    spec = {**BASE, "training": {**training, "rollouts": {"engine": "vllm"}}}
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)
    training.pop("gpusPerNode", None)
    parse_spec({**BASE, "training": training})  # fine with transformers rollouts


def render(**training) -> dict:
    spec = parse_spec({**BASE, "training": training})
    context = jobs.RunContext("ml", "demo", "uid-1", spec, jobs.Images("v:1", "t:1", "w:1"))
    return jobs.stage_job(context, StageKey(0, "train"), 0, suspend=False)["spec"]["template"][
        "spec"
    ]


def test_the_train_pod_gets_the_server_as_a_sidecar_on_its_own_gpus():
    pod = render(gpusPerNode=8, rollouts={"engine": "vllm", "startupTimeoutSeconds": 905})
    (trainer,) = pod["containers"]
    (sidecar,) = pod["initContainers"]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert trainer["resources"]["limits"][jobs.GPU] == "7"
    assert env["PET_NPROC_PER_NODE"] == "7"
    assert env[rollout_server.SERVER_ENV] == "http://127.0.0.1:8000"
    assert env[rollout_server.SYNC_DIR_ENV] == jobs.ROLLOUT_SYNC_DIR
    assert sidecar["image"] == "v:1" and sidecar["restartPolicy"] == "Always"
    assert sidecar["resources"]["limits"][jobs.GPU] == "1"
    assert sidecar["command"] == ["evoquality"] and sidecar["args"][:2] == [
        "rollout-server",
        "--run",
    ]
    assert sidecar["args"][-4:] == ["--gpus", "1", "--port", "8000"]
    assert sidecar["startupProbe"]["failureThreshold"] == 91  # 905 s in 10 s periods, rounded up
    assert not any(e["name"].startswith(("PET_", "EVOQUALITY_ROLLOUT")) for e in sidecar["env"])
    mounts = {m["name"] for m in sidecar["volumeMounts"]}
    assert {"rollout-weights", "scratch", "spec"} <= mounts
    assert {"name": "rollout-weights", "emptyDir": {}} in pod["volumes"]


def test_without_vllm_rollouts_the_train_pod_is_unchanged():
    pod = render(gpusPerNode=8)
    assert "initContainers" not in pod
    assert pod["containers"][0]["resources"]["limits"][jobs.GPU] == "8"
