"""The operator's Jobs executed: kopf running for real against the KMock cluster, every Job it
creates run as local processes by the test Job executor (tests/plugins/job_executor.py), every
artifact going through moto's S3 server.

- a 2-round run of examples/smoke.yaml (2 vote shards in an Indexed Job, 2-rank ZeRO-3 training,
  eval) ends Succeeded, its status equal to the S3 summaries, its promoted checkpoint loadable;
  on the way a vote shard killed once is retried alone and the operator, restarted while a stage
  runs, creates no Job twice (one run carries both faults: the suite's time budget);
- `nodes: 2`: two training pods rendezvous through the headless Service's pod names; a rank
  killed after the first complete checkpoint fails the Job, the operator's next attempt resumes
  from that checkpoint;
- a negative control: torchrun's old argv (no `--` before the program) exits 2.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from evoquality_operator import jobs as jobs_module
from evoquality_operator.reconcile import FAILED, StageKey

from evoquality import artifacts
from evoquality.spec import parse_spec
from evoquality.storage import open_store
from evoquality.summaries import merge_vote_metrics
from tests.plugins.job_executor import JobExecutor, LocalImage, PodRun
from tests.plugins.kmock_cluster import ClusterHandle, operator, wait_for
from tests.plugins.s3server import S3Bucket

NS = "ml"
RUNS_PATH = f"/apis/evoquality.io/v1alpha1/namespaces/{NS}/evoqualityruns"
ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "examples" / "smoke.yaml"
SECRET = "s3-creds"
PVC = "model-cache"
STAGES = ("vote", "rank", "train", "eval")
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
# Bounds, not costs: a loaded 2-core machine runs these stages several times slower than an idle
# one, and the first DeepSpeed use compiles a CPU op (~2 min, cached afterwards).
STAGE_DEADLINE_S = 300
RUN_DEADLINE_S = 1500
TERMINAL = ("Succeeded", "Failed")


def local_image(tmp_path: Path) -> LocalImage:
    """The images' stand-in: this venv, offline, a shared DeepSpeed op cache (prebuilt in the
    trainer image)."""
    return LocalImage(
        env={
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "MPLCONFIGDIR": str(tmp_path / "matplotlib"),
            "TORCH_EXTENSIONS_DIR": os.environ.get(
                "TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions")
            ),
        }
    )


def smoke_spec(base: str, storage: str, endpoint: str, **overrides: Any) -> dict[str, Any]:
    """examples/smoke.yaml's spec on S3, the model from the store, caches on a shared PVC."""
    spec = yaml.safe_load(SMOKE.read_text())["spec"]
    spec["model"]["base"] = base
    spec["storage"] = {"uri": storage, "endpoint": endpoint, "secretName": SECRET}
    cache_env = [{"name": "EVOQUALITY_CACHE", "value": f"{jobs_module.MODEL_CACHE}/evoquality"}]
    spec["pods"] = {"modelCachePvc": PVC, **{s: {"env": cache_env} for s in STAGES}}
    spec["retries"] = {"maxRetries": 1, "backoffSeconds": 1}
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    parse_spec(spec)  # fail here, not in the operator
    return spec


def run_manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "evoquality.io/v1alpha1",
        "kind": "EvoQualityRun",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def put_secret(cluster: ClusterHandle, env: dict[str, str]) -> None:
    data = {k: base64.b64encode(env[k].encode()).decode() for k in CREDENTIALS}
    cluster.put(
        f"/api/v1/namespaces/{NS}/secrets",
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, "data": data},
    )


def status_of(cluster: ClusterHandle, name: str) -> dict[str, Any]:
    return (cluster.api.get_run(NS, name) or {}).get("status") or {}


@dataclass
class Cluster:
    """The emulated cluster with a run's S3 bucket, its secret and the Job executor running."""

    kube: ClusterHandle
    executor: JobExecutor
    bucket: S3Bucket
    model_uri: str

    def start(self, name: str, **overrides: Any) -> dict[str, Any]:
        """Create the run (the operator may be down); returns its spec."""
        spec = smoke_spec(
            self.model_uri, f"{self.bucket.uri}/runs", self.bucket.endpoint_url, **overrides
        )
        self.kube.put(RUNS_PATH, run_manifest(name, spec))
        return spec

    def status(self, name: str) -> dict[str, Any]:
        return status_of(self.kube, name)

    def store(self, name: str):
        return open_store(f"{self.bucket.uri}/runs/{NS}/{name}")

    def wait(self, what: str, predicate, timeout: float) -> Any:
        """Wait with the pods' logs in the failure message."""
        try:
            return wait_for(predicate, timeout, 0.2, what)
        except AssertionError:
            raise AssertionError(
                f"timed out waiting for {what}\n{self.executor.describe()}"
            ) from None

    def finish(self, name: str, timeout: float) -> dict[str, Any]:
        status = self.wait(
            f"run {name} to end",
            lambda: (s := self.status(name)).get("phase") in TERMINAL and s,
            timeout,
        )
        assert status["phase"] == "Succeeded", f"{status}\n{self.executor.describe()}"
        assert self.executor.errors == []
        return status

    def job_pods(self, job: str) -> dict[int, list[PodRun]]:
        """The executor's pods of a Job by completion index, in start order."""
        by_index: dict[int, list[PodRun]] = {}
        for pod in self.executor.pods_of(job):
            by_index.setdefault(pod.index, []).append(pod)
        return by_index


@pytest.fixture
def executed(cluster, job_executor, s3_bucket, tiny_model_dir, tmp_path) -> Cluster:
    """The tiny model in the bucket, the S3 secret in the namespace, the executor running."""
    model_uri = f"{s3_bucket.uri}/models/tiny"
    open_store(model_uri).put_dir("", tiny_model_dir)
    put_secret(cluster, s3_bucket.env)
    executor = job_executor(NS, default_image=local_image(tmp_path))
    return Cluster(cluster, executor, s3_bucket, model_uri)


def assert_status_matches_store(status: dict[str, Any], store, spec: dict[str, Any]) -> None:
    """Every stage's metrics in the status are those of its committed summary in S3."""
    shards = spec["voting"]["shards"]
    for r, entry in enumerate(status["rounds"]):
        votes = artifacts.read_shard_summaries(store, "vote", r, shards).require()
        merged = merge_vote_metrics([v["metrics"] for v in votes])
        assert entry["vote"] == pytest.approx(merged), r
        for stage in ("rank", "train", "eval"):
            if stage not in entry:
                continue
            stored = artifacts.read_summary(store, stage, r)["metrics"]
            assert entry[stage], (r, stage)
            assert entry[stage] == pytest.approx({k: stored[k] for k in entry[stage]}), (r, stage)
    if "base" in status:
        stored = artifacts.read_summary(store, "eval", None)["metrics"]
        base = status["base"]["eval"]
        assert base == pytest.approx({k: stored[k] for k in base})


@pytest.mark.slow
def test_old_torchrun_argv_fails_with_exit_2(cluster: ClusterHandle, job_executor, tmp_path):
    """Negative control: the train command as the operator rendered it before `--`, executed."""
    spec = parse_spec(
        smoke_spec("tiny", "s3://bucket/runs", "http://127.0.0.1:1", training={"gpusPerNode": 2})
    )
    ctx = jobs_module.RunContext(NS, "old", "uid-old", spec)
    put_secret(cluster, dict.fromkeys(CREDENTIALS, "unused"))
    cluster.put(f"/api/v1/namespaces/{NS}/configmaps", jobs_module.spec_configmap(ctx))
    job = jobs_module.stage_job(ctx, StageKey(0, "train"), 0, suspend=False)
    container = job["spec"]["template"]["spec"]["containers"][0]
    stage = ["stage", "train", "--run", "s3://bucket/runs/ml/old", "--round", "0"]
    container["command"] = ["torchrun"]
    container["args"] = [
        *("--standalone", "--nnodes", "1", "--nproc-per-node", "2", "--no-python"),
        *("evoquality", *stage, "--spec", jobs_module.SPEC_FILE),
    ]
    cluster.put(f"/apis/batch/v1/namespaces/{NS}/jobs", job)
    executor: JobExecutor = job_executor(NS, default_image=local_image(tmp_path))
    name = job["metadata"]["name"]

    def finished() -> dict[str, Any] | None:
        body = cluster.api.request("GET", f"/apis/batch/v1/namespaces/{NS}/jobs/{name}")
        return body if jobs_module.job_state(body) == FAILED else None

    body = wait_for(finished, 60, 0.2, "the Job to fail")
    (pod,) = executor.pods_of(name)
    assert pod.exit_code == 2, executor.describe()
    pods = cluster.api.list("v1", "Pod", NS, f"job-name={name}")
    observed = jobs_module.observe_job(body, pods)
    assert observed is not None and observed.state == FAILED
    assert "ambiguous option: --run could match" in observed.message
    assert executor.errors == []


@pytest.mark.slow
@pytest.mark.timeout(RUN_DEADLINE_S + 300)
def test_two_rounds_with_faults_succeed(executed: Cluster, tmp_path):
    """The smoke spec on the cluster path: 2 rounds, 2 vote shards (Indexed Job), 2-rank ZeRO-3
    training, evaluation. On the way, round 0's vote shard 1 is SIGKILLed once (only that index
    gets a second pod) and the operator is stopped and started while round 0 trains (it adopts
    the running Job: no Job twice). The status equals the S3 summaries; the checkpoint loads."""
    heldout = {"name": "syniqa-heldout", "manifest": "syniqa:test?size=56", "maxImages": 16}
    spec = executed.start(
        "quick",
        training={"gpusPerNode": 2, "deepspeed": "zero3"},
        evaluation={"benchmarks": [heldout]},
    )
    vote, train = "quick-r0-vote", "quick-r0-train"
    with operator():
        shard = executed.wait(
            "vote shard 1 to run",
            lambda: next((p for p in executed.executor.running(vote) if p.index == 1), None),
            STAGE_DEADLINE_S,
        )
        executed.executor.signal(shard, signal.SIGKILL)
        executed.wait("the train pod", lambda: executed.executor.running(train), RUN_DEADLINE_S)
    assert executed.executor.running(train), "the operator must restart while train runs"
    with operator():
        status = executed.finish("quick", RUN_DEADLINE_S)

    pods = executed.job_pods(vote)
    assert {i: [p.exit_code for p in pods[i]] for i in pods} == {0: [0], 1: [137, 0]}
    job = executed.kube.api.request("GET", f"/apis/batch/v1/namespaces/{NS}/jobs/{vote}")
    assert (job["status"]["completedIndexes"], job["status"]["failedIndexes"]) == ("0-1", "")
    assert job["status"]["failed"] == 1
    assert not any(p.terminated for p in executed.executor.pods.values())
    assert [len(p) for p in executed.job_pods("quick-r1-vote").values()] == [1, 1]
    for r in range(2):  # one pod per train Job, both ranks in it, and no rank aborted at exit
        train_pods = executed.executor.pods_of(f"quick-r{r}-train")
        assert [p.exit_code for p in train_pods] == [0], executed.executor.describe()
    created = executed.kube.created("jobs")
    assert len(created) == len(set(created)) == 9  # base eval + 2 x (vote, rank, train, eval)
    assert [c for c in executed.kube.conflicts() if c[0] == "jobs"] == []
    assert [status["stages"][f"r{r}-vote"]["shardsReported"] for r in range(2)] == [2, 2]

    store = executed.store("quick")
    assert_status_matches_store(status, store, spec)
    assert [status["rounds"][r]["train"]["world_size"] for r in range(2)] == [2, 2]
    from transformers import AutoModelForImageTextToText

    from evoquality.models import load_processor, resolve_model

    assert status["checkpoint"] == status["rounds"][1]["train"]["checkpoint"]
    local = resolve_model(status["checkpoint"], tmp_path / "load")
    model = AutoModelForImageTextToText.from_pretrained(local)
    load_processor(local, spec["model"]["minPixels"], spec["model"]["maxPixels"])
    assert model.num_parameters() > 0


@pytest.mark.slow
@pytest.mark.timeout(RUN_DEADLINE_S + 300)
def test_two_nodes_rendezvous_and_a_killed_rank_resumes(executed: Cluster):
    """`nodes: 2`: two pods rendezvous through the headless Service's pod names and train once;
    SIGKILL of the second node's rank after the first complete checkpoint fails the pod and the
    Job, the operator's next attempt resumes from that checkpoint (its step log continues)."""
    from evoquality.stages import train_checkpoints

    spec = executed.start(
        "nodes",
        rounds=1,
        evaluation={"benchmarks": []},
        voting={"shards": 1},
        training={"nodes": 2, "gpusPerNode": 1, "maxSteps": 12, "saveSteps": 2},
    )
    first, retry = "nodes-r0-train", "nodes-r0-train-a1"
    store = executed.store("nodes")
    with operator():
        executed.wait(
            "two train pods", lambda: len(executed.executor.running(first)) == 2, RUN_DEADLINE_S
        )

        def complete() -> list:
            keys = store.list(artifacts.stage_prefix("train", 0))
            return train_checkpoints.complete_checkpoints(keys)

        (step, prefix), *_ = executed.wait("a complete checkpoint", complete, STAGE_DEADLINE_S)
        node1 = next(p for p in executed.executor.running(first) if p.index == 1)
        executed.executor.signal(
            node1, signal.SIGKILL, pick=lambda p: "evoquality" in " ".join(p.cmdline())
        )
        status = executed.finish("nodes", RUN_DEADLINE_S)

    pods = executed.job_pods(first)
    assert pods[1][0].exit_code != 0 and pods[0][0].terminated  # the Job failed, node 0 removed
    service = f"/api/v1/namespaces/{NS}/services/nodes-r0-train-svc"
    assert executed.kube.api.request("GET", service)["spec"]["clusterIP"] == "None"
    rendered = {e["name"]: e.get("value") for e in pods[1][0].obj["spec"]["containers"][0]["env"]}
    assert rendered["PET_MASTER_ADDR"] == f"{first}-0.nodes-r0-train-svc"  # resolved by the Service
    assert pods[1][0].env["PET_MASTER_ADDR"] == "127.0.0.1"
    assert [p.env["PET_NODE_RANK"] for p in (pods[0][0], pods[1][0])] == ["0", "1"]
    assert sorted(p.index for p in executed.executor.pods_of(retry)) == [0, 1]
    assert all(p.exit_code == 0 for p in executed.executor.pods_of(retry))
    assert status["stages"]["r0-train"]["attempt"] == 1
    assert_status_matches_store(status, store, spec)
    summary = artifacts.read_summary(store, "train", 0)
    assert summary["metrics"]["world_size"] == 2
    steps = store.get_bytes(artifacts.resolve(store, summary, "steps.jsonl")).decode().splitlines()
    records = [json.loads(line) for line in steps]
    assert [r["step"] for r in records] == list(range(1, spec["training"]["maxSteps"] + 1))
    saved = store.get_bytes(prefix + "steps.jsonl").decode().splitlines()
    assert records[: len(saved)] == [json.loads(line) for line in saved]  # carried, not re-run
    assert len(saved) == step
