"""The operator's train Job with vLLM rollouts, executed: kopf against the KMock cluster, every Job
run by the test Job executor, artifacts through moto's S3 server.

The train pod's native sidecar (`evoquality rollout-server`, the voter image: here the vLLM
venv) fetches the round's policy from S3 and serves it; the executor starts the trainer container
only once the sidecar's startupProbe passes, as the kubelet does, and stops the sidecar when the
trainer exits. The trainer reaches the server through the rendered `EVOQUALITY_ROLLOUT_SERVER`
and syncs weights through the shared `rollout-weights` volume. The committed step log shows the
rollouts came from the trained policy (vLLM's log-probs equal the trainer's, step by step).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from evoquality_operator import jobs as jobs_module

from evoquality import artifacts
from tests.e2e.test_executed_jobs import (  # noqa: F401 (executed: the fixture)
    RUN_DEADLINE_S,
    Cluster,
    executed,
    local_image,
)
from tests.plugins.job_executor import LocalImage
from tests.plugins.kmock_cluster import operator

STEPS = 3
SYNCED_TOLERANCE = 1e-3  # nats (tests/e2e/test_vllm_rollouts.py measures ~4e-6)


@pytest.fixture
def executed_with_vllm(
    executed: Cluster,  # noqa: F811
    job_executor,
    vllm_python,
    tmp_path,
) -> Cluster:
    """`executed`, with the voter image standing for the vLLM venv."""
    trainer = local_image(tmp_path)
    voter = LocalImage(
        bin_dir=Path(vllm_python).parent,
        env={**trainer.env, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"},
    )
    executed.executor.images[jobs_module.Images.from_env().voter] = voter  # the vote Job's too
    return executed


@pytest.mark.slow
@pytest.mark.timeout(RUN_DEADLINE_S + 300)
def test_train_job_with_a_vllm_sidecar_succeeds(executed_with_vllm: Cluster):
    cluster = executed_with_vllm
    spec = cluster.start(
        "rollouts",
        rounds=1,
        voting={"shards": 1},
        evaluation={"benchmarks": [], "evaluateBase": False},
        training={
            "gpusPerNode": 0,
            "maxSteps": STEPS,
            "topK": 0,  # vLLM's processed log-probs then equal the trainer's (no renormalisation)
            "rollouts": {"engine": "vllm", "startupTimeoutSeconds": 600},
        },
    )
    with operator():
        status = cluster.finish("rollouts", RUN_DEADLINE_S)

    (pod,) = cluster.executor.pods_of("rollouts-r0-train")
    assert pod.exit_code == 0
    (sidecar,) = pod.obj["spec"]["initContainers"]
    assert sidecar["name"] == jobs_module.ROLLOUT_CONTAINER
    assert sidecar["restartPolicy"] == "Always"
    assert [p.poll() is not None for p in pod.sidecars] == [True]  # stopped with the trainer
    assert pod.env["EVOQUALITY_ROLLOUT_SERVER"].startswith("http://127.0.0.1:")
    assert not pod.env["EVOQUALITY_ROLLOUT_SERVER"].endswith(":8000")  # the rewritten port

    train = status["rounds"][0]["train"]
    assert train["rollout_engine"] == "vllm" and train["weight_syncs"] == STEPS
    store = cluster.store("rollouts")
    summary = artifacts.read_summary(store, "train", 0)
    lines = store.get_bytes(artifacts.resolve(store, summary, "steps.jsonl")).decode()
    records = [json.loads(line) for line in lines.splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert max(r["rollout_logp_diff_max"] for r in records) < SYNCED_TOLERANCE, records
    assert spec["training"]["rollouts"]["engine"] == "vllm"
