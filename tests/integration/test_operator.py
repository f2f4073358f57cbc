"""The operator end to end: kopf running for real against KMock's emulator over HTTP on 127.0.0.1.

The test plays the Job controller (starts Jobs, completes or fails them, writes pods with
termination messages) and scrapes the operator's /metrics. Run with the plugin:
`pytest -p tests.plugins.kmock_cluster tests/integration/test_operator.py`.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kopf.testing import KopfRunner
from prometheus_client.parser import text_string_to_metric_families

from tests.plugins.kmock_cluster import (
    ClusterHandle,
    JobController,
    free_port,
    now_iso,
    operator,
    wait_for,
)

NS = "ml"
RUNS_PATH = f"/apis/evoquality.io/v1alpha1/namespaces/{NS}/evoqualityruns"
MANAGED = "app.kubernetes.io/managed-by=evoquality-operator"
FULL_PLAN = [
    "demo-base-eval",
    "demo-r0-vote",
    "demo-r0-rank",
    "demo-r0-train",
    "demo-r0-eval",
    "demo-r1-vote",
    "demo-r1-rank",
    "demo-r1-train",
    "demo-r1-eval",
]


def run_manifest(name: str = "demo", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "data": {"manifest": "s3://pool/images.csv"},
        "storage": {
            "uri": "s3://artifacts/runs/",
            "endpoint": "http://minio:9000",
            "secretName": "s3-creds",
        },
        "rounds": 2,
        "voting": {"shards": 2},
        "evaluation": {
            "benchmarks": [{"name": "syniqa", "manifest": "s3://bench/syniqa.csv"}],
            "validation": {"name": "val", "manifest": "s3://bench/val.csv"},
        },
        "retries": {"maxRetries": 1, "backoffSeconds": 1},
        "pods": {"vote": {"envFromSecrets": ["hf-token"], "shmSize": "8Gi"}},
    }
    body.update(spec)
    return {
        "apiVersion": "evoquality.io/v1alpha1",
        "kind": "EvoQualityRun",
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


def stage_metrics(job: dict[str, Any], index: int) -> dict[str, Any]:
    labels = job["metadata"]["labels"]
    stage = labels["evoquality.io/stage"]
    r = labels["evoquality.io/round"]
    k = -1 if r == "base" else int(r)
    if stage == "vote":
        return {
            "pairs": 50 + 50 * index,
            "votes": 400 + 400 * index,
            "agreement": 0.7 + 0.1 * index + 0.01 * k,
            "abstention_rate": 0.02,
            "position_bias": 0.51,
            "tie_rate": 0.05,
            "pairs_per_s": 2.0,
        }
    if stage == "rank":
        return {"labels": 140 + k, "tie_rate": 0.05, "agreement": 0.8, "abstention_rate": 0.02}
    if stage == "train":
        return {
            "reward_mean": 0.6 + 0.1 * k,
            "reward_std": 0.1,
            "kl": 0.01 * (k + 1),
            "loss": 0.3,
            "steps": 10,
            "checkpoint": f"s3://artifacts/ckpt-{k}",
        }
    return {
        "syniqa.srcc": 0.5 + 0.1 * k,
        "syniqa.plcc": 0.55 + 0.1 * k,
        "syniqa.krcc": 0.4,
        "wavg.srcc": 0.5 + 0.1 * k,
        "wavg.plcc": 0.55 + 0.1 * k,
        "validation.srcc": 0.6 + 0.1 * k,
        "validation.plcc": 0.6,
    }


def succeed_all(job: dict[str, Any]) -> tuple[str, Any]:
    completions = int(job["spec"].get("completions") or 1)
    return "succeed", [stage_metrics(job, i) for i in range(completions)]


def status_of(cluster: ClusterHandle, name: str = "demo") -> dict[str, Any]:
    body = cluster.api.get_run(NS, name)
    return (body or {}).get("status") or {}


def scrape(cluster: ClusterHandle) -> dict[tuple[str, frozenset], float]:
    url = f"http://127.0.0.1:{cluster.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return values


def metric(values: dict, name: str, **labels: str) -> float | None:
    return values.get((name, frozenset(labels.items())))


def drive(
    cluster: ClusterHandle,
    controller: JobController,
    name: str = "demo",
    until: Callable[[dict], bool] = lambda st: st.get("phase") in ("Succeeded", "Failed"),
    timeout: float = 30.0,
) -> list[tuple]:
    """Play the Job controller until `until(status)`; finishes a Job only once the operator has
    seen it running. Returns the (phase, round, stage) history."""
    history: list[tuple] = []
    deadline = time.monotonic() + timeout
    while True:
        status = status_of(cluster, name)
        seen = (status.get("phase"), status.get("round"), status.get("stage"))
        if not history or history[-1] != seen:
            history.append(seen)
        if until(status):
            return history
        if time.monotonic() > deadline:
            raise AssertionError(f"run {name} stuck: {json.dumps(status)[:2000]}")
        running = {
            e["job"] for e in (status.get("stages") or {}).values() if e.get("state") == "Running"
        }
        controller.tick(finish=lambda job, names=running: job["metadata"]["name"] in names)
        time.sleep(0.05)


def test_two_round_run_succeeds_with_status_children_and_metrics(cluster: ClusterHandle):
    cluster.put(RUNS_PATH, run_manifest())
    controller = JobController(cluster, NS, succeed_all)
    with operator():
        history = drive(cluster, controller)
        status = status_of(cluster)
        values = scrape(cluster)

    # the phases and stages went in order
    # Pending can pass between two polls (the unit tests of reconcile cover it); the rest is ordered
    assert history[0][0] in (None, "Pending", "Running")
    order = [(r, s) for p, r, s in history if p == "Running"]
    expected = [
        (0, "vote"),
        (0, "rank"),
        (0, "train"),
        (1, "vote"),
        (1, "rank"),
        (1, "train"),
        (1, "eval"),
    ]
    firsts = sorted(set(order), key=order.index)
    assert [x for x in firsts if x in expected] == expected
    assert status["phase"] == "Succeeded"

    # status filled from the summaries
    r0, r1 = status["rounds"]
    assert r0["vote"]["pairs"] == 150 and r0["vote"]["votes"] == 1200
    assert r0["vote"]["agreement"] == pytest.approx((0.70 * 50 + 0.80 * 100) / 150)
    assert r0["rank"]["labels"] == 140 and r1["rank"]["labels"] == 141
    assert r1["train"]["reward_mean"] == pytest.approx(0.7)
    assert r1["eval"]["syniqa.srcc"] == pytest.approx(0.6)
    assert status["base"]["eval"]["validation.srcc"] == pytest.approx(0.5)
    assert status["selectionMetric"] == "validation.srcc"
    assert status["bestValidationSrcc"] == pytest.approx(0.7) and status["bestRound"] == "1"
    assert status["checkpoint"] == "s3://artifacts/ckpt-1"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["SpecValid"]["status"] == "True"
    assert conditions["Failed"]["status"] == "False"
    assert status["stages"]["r0-vote"]["shardsReported"] == 2

    # children: one Job per stage, owner-referenced, labelled; the spec ConfigMap
    run = cluster.api.get_run(NS, "demo")
    uid = run["metadata"]["uid"]
    assert sorted(cluster.created("jobs")) == sorted(FULL_PLAN)
    assert cluster.conflicts() == []
    # the Job watch is filtered by the API server, not in the operator
    job_reads = cluster.operator_reads("jobs")
    managed = "app.kubernetes.io/managed-by=evoquality-operator"
    assert job_reads and all(managed in p.get("labelSelector", "") for p in job_reads), job_reads
    assert any(p.get("watch") == "true" for p in job_reads)
    jobs = {j["metadata"]["name"]: j for j in cluster.api.list("batch/v1", "Job", NS, MANAGED)}
    for job in jobs.values():
        assert job["metadata"]["ownerReferences"][0]["uid"] == uid
        assert job["metadata"]["ownerReferences"][0]["controller"] is True
    vote = jobs["demo-r0-vote"]
    assert vote["spec"]["completionMode"] == "Indexed" and vote["spec"]["completions"] == 2
    assert vote["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["type"] == (
        "DisruptionTarget"
    )
    container = vote["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/voter:1"
    assert container["args"] == [
        "stage",
        "vote",
        "--run",
        "s3://artifacts/runs/ml/demo",
        "--round",
        "0",
        "--spec",
        "/etc/evoquality/spec.json",
        "--num-shards",
        "2",
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EVOQUALITY_ATTEMPT_ID"] == "demo-r0-vote"
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
    assert container["envFrom"] == [
        {"secretRef": {"name": "s3-creds"}},
        {"secretRef": {"name": "hf-token", "optional": True}},  # loaded whole: optional
    ]
    assert jobs["demo-base-eval"]["metadata"]["labels"]["evoquality.io/round"] == "base"
    configmaps = cluster.api.list("v1", "ConfigMap", NS, "evoquality.io/run=demo")
    assert [c["metadata"]["name"] for c in configmaps] == ["demo-spec"]
    assert configmaps[0]["metadata"]["ownerReferences"][0]["uid"] == uid
    spec_json = json.loads(configmaps[0]["data"]["spec.json"])
    assert spec_json["voting"]["shards"] == 2 and spec_json["voting"]["votesPerPair"] == 32

    # the metrics endpoint matches the status
    lab = {"namespace": NS, "run": "demo"}
    assert metric(values, "evoquality_runs", namespace=NS, phase="Succeeded") == 1
    assert metric(values, "evoquality_run_round", **lab) == status["round"]
    for r, entry in enumerate(status["rounds"]):
        rl = {**lab, "round": str(r)}
        assert metric(values, "evoquality_vote_agreement", **rl) == pytest.approx(
            entry["vote"]["agreement"]
        )
        assert metric(values, "evoquality_vote_abstention_ratio", **rl) == pytest.approx(
            entry["vote"]["abstention_rate"]
        )
        assert metric(values, "evoquality_pseudo_labels", **rl) == entry["rank"]["labels"]
        assert metric(values, "evoquality_train_reward", **rl) == pytest.approx(
            entry["train"]["reward_mean"]
        )
        assert metric(values, "evoquality_train_kl", **rl) == pytest.approx(entry["train"]["kl"])
        for bench in ("syniqa", "validation"):
            assert metric(values, "evoquality_eval_srcc", **rl, benchmark=bench) == pytest.approx(
                entry["eval"][f"{bench}.srcc"]
            )
    assert metric(
        values, "evoquality_eval_srcc", **lab, round="base", benchmark="syniqa"
    ) == pytest.approx(status["base"]["eval"]["syniqa.srcc"])
    duration = metric(values, "evoquality_stage_duration_seconds", **lab, round="0", stage="train")
    assert duration is not None and duration >= 0


def _settled(cluster: ClusterHandle, controller: JobController) -> bool:
    """The status accounts for every Job (and the run goes on or is done)."""
    status = status_of(cluster)
    stages = {e["job"]: e for e in (status.get("stages") or {}).values()}
    jobs = controller.jobs()
    for job in jobs:
        name = job["metadata"]["name"]
        entry = stages.get(name)
        if entry is None:
            return False
        if name in controller.finished and entry["state"] != "Succeeded":
            return False
    unfinished = [j for j in jobs if j["metadata"]["name"] not in controller.finished]
    return status.get("phase") == "Succeeded" or bool(unfinished)


def test_operator_restarted_at_every_transition_creates_no_job_twice(cluster: ClusterHandle):
    cluster.put(RUNS_PATH, run_manifest(voting={"shards": 1}))
    controller = JobController(cluster, NS, succeed_all)
    restarts = 0
    for _ in range(20):
        with operator():
            wait_for(lambda: _settled(cluster, controller), 15, message="operator to settle")
        restarts += 1
        if status_of(cluster).get("phase") == "Succeeded":
            break
        # the operator is down: one Job finishes
        target = sorted(
            j["metadata"]["name"]
            for j in controller.jobs()
            if j["metadata"]["name"] not in controller.finished
        )[0]
        controller.tick(finish=lambda job: False)
        controller.tick(finish=lambda job, t=target: job["metadata"]["name"] == t)
    status = status_of(cluster)
    assert status["phase"] == "Succeeded"
    assert restarts >= len(FULL_PLAN)
    created = cluster.created("jobs")
    assert sorted(created) == sorted(FULL_PLAN)  # each Job exactly once
    assert [c for c in cluster.conflicts() if c[0] == "jobs"] == []
    assert status["rounds"][1]["eval"]["syniqa.srcc"] == pytest.approx(0.6)


def test_failing_stage_is_retried_then_the_run_fails(cluster: ClusterHandle):
    def behaviour(job: dict[str, Any]) -> tuple[str, Any]:
        if job["metadata"]["labels"]["evoquality.io/stage"] == "rank":
            return "fail", "Traceback ...\nValueError: rank exploded on shard data"
        return succeed_all(job)

    cluster.put(RUNS_PATH, run_manifest(voting={"shards": 1}))
    controller = JobController(cluster, NS, behaviour)
    with operator():
        drive(cluster, controller)
        status = status_of(cluster)
        values = scrape(cluster)
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "StageFailed"
    assert "rank of round 0" in failed["message"]
    assert "rank exploded on shard data" in failed["message"]
    assert "2 attempt" in failed["message"]
    assert {"demo-r0-rank", "demo-r0-rank-a1"} <= set(cluster.created("jobs"))
    assert "demo-r0-train" not in cluster.created("jobs")
    lab = {"namespace": NS, "run": "demo", "round": "0", "stage": "rank"}
    assert metric(values, "evoquality_stage_failures_total", **lab) == 2
    assert metric(values, "evoquality_stage_retries_total", **lab) == 1
    assert metric(values, "evoquality_runs", namespace=NS, phase="Failed") == 1


def _patch_spec(cluster: ClusterHandle, name: str, spec: dict[str, Any]) -> None:
    cluster.api.request(
        "PATCH",
        f"{RUNS_PATH}/{name}",
        body={"spec": spec},
        content_type="application/merge-patch+json",
    )


def _job(cluster: ClusterHandle, name: str) -> dict[str, Any] | None:
    for job in cluster.api.list("batch/v1", "Job", NS, MANAGED):
        if job["metadata"]["name"] == name:
            return job
    return None


def test_suspend_and_resume(cluster: ClusterHandle):
    cluster.put(RUNS_PATH, run_manifest("plain", evaluation={"benchmarks": []}))
    controller = JobController(cluster, NS, lambda job: None)  # Jobs keep running
    with operator():
        wait_for(lambda: _job(cluster, "plain-r0-vote"), message="plain vote Job")
        controller.tick()
        wait_for(lambda: status_of(cluster, "plain").get("phase") == "Running")
        # suspend: the running Job is suspended, nothing new starts
        _patch_spec(cluster, "plain", {"suspend": True})
        wait_for(
            lambda: _job(cluster, "plain-r0-vote")["spec"]["suspend"] is True,
            message="Job suspended",
        )
        wait_for(lambda: status_of(cluster, "plain").get("phase") == "Suspended")
        progressing = next(
            c for c in status_of(cluster, "plain")["conditions"] if c["type"] == "Progressing"
        )
        assert progressing["status"] == "False" and progressing["reason"] == "Suspended"
        # resume
        _patch_spec(cluster, "plain", {"suspend": False})
        wait_for(
            lambda: _job(cluster, "plain-r0-vote")["spec"]["suspend"] is False,
            message="Job resumed",
        )
        wait_for(lambda: status_of(cluster, "plain").get("phase") in ("Running", "Pending"))


class Kueue:
    """Plays Kueue for one queue: every suspended Job of the queue is admitted (un-suspended),
    as Kueue does for each Workload that fits, however often the Job is suspended again."""

    def __init__(self, cluster: ClusterHandle, queue: str) -> None:
        self.cluster, self.queue = cluster, queue

    def admit(self) -> list[str]:
        admitted = []
        for job in self.cluster.api.list(
            "batch/v1", "Job", NS, f"kueue.x-k8s.io/queue-name={self.queue}"
        ):
            if job["spec"].get("suspend"):
                self.cluster.api.request(
                    "PATCH",
                    f"/apis/batch/v1/namespaces/{NS}/jobs/{job['metadata']['name']}",
                    body={"spec": {"suspend": False}},
                    content_type="application/merge-patch+json",
                )
                admitted.append(job["metadata"]["name"])
        return admitted


def _annotate(cluster: ClusterHandle, run: str, **annotations: str) -> None:
    """`kubectl annotate`: an update of the run, which the operator reconciles."""
    cluster.api.request(
        "PATCH",
        f"{RUNS_PATH}/{run}",
        body={"metadata": {"annotations": annotations}},
        content_type="application/merge-patch+json",
    )


def _reconciles(cluster: ClusterHandle, run: str) -> int:
    """Passes the operator made for `run` (each lists the run's Jobs once)."""
    return sum(
        f"evoquality.io/run={run}" in p.get("labelSelector", "")
        for p in cluster.operator_reads("jobs")
    )


def test_kueue_stop_is_one_write_over_50_reconciles_and_resume_counts_no_failure(
    cluster: ClusterHandle,
):
    cluster.put(
        RUNS_PATH,
        run_manifest(
            "queued", evaluation={"benchmarks": []}, queueName="gpu-queue",
            priorityClass="research-low",
        ),
    )  # fmt: skip
    kueue = Kueue(cluster, "gpu-queue")
    controller = JobController(cluster, NS, lambda job: None)  # admitted Jobs keep running
    with operator():
        queued = wait_for(lambda: _job(cluster, "queued-r0-vote"), message="queued Job")
        labels = queued["metadata"]["labels"]
        assert labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert labels["kueue.x-k8s.io/priority-class"] == "research-low"
        assert queued["spec"]["suspend"] is True  # created suspended: Kueue admits
        wait_for(lambda: status_of(cluster, "queued").get("phase") == "Queued")
        assert kueue.admit() == ["queued-r0-vote"]
        controller.tick()  # the Job controller starts it: a Ready pod
        wait_for(lambda: status_of(cluster, "queued").get("phase") == "Running")

        writes_before = len(cluster.operator_writes("jobs"))
        _patch_spec(cluster, "queued", {"suspend": True})
        for poke in range(50):  # Kueue admits whatever is suspended; the operator reconciles
            kueue.admit()
            seen = _reconciles(cluster, "queued")
            _annotate(cluster, "queued", poke=str(poke))
            wait_for(lambda n=seen: _reconciles(cluster, "queued") > n, message="a reconcile")
        assert cluster.operator_writes("jobs")[writes_before:] == [("DELETE", "queued-r0-vote")]
        assert _job(cluster, "queued-r0-vote") is None
        assert status_of(cluster, "queued")["phase"] == "Suspended"

        _patch_spec(cluster, "queued", {"suspend": False})  # resume: the same attempt again
        again = wait_for(lambda: _job(cluster, "queued-r0-vote"), message="the Job again")
        assert again["spec"]["suspend"] is True
        kueue.admit()
        JobController(cluster, NS, lambda job: None).tick()  # a new Job of the same name
        wait_for(lambda: status_of(cluster, "queued").get("phase") == "Running")
        entry = status_of(cluster, "queued")["stages"]["r0-vote"]
        assert entry["attempt"] == 0 and "failures" not in entry and "retryAt" not in entry
        assert cluster.created("jobs").count("queued-r0-vote") == 2

        # queueName is fixed once Jobs exist: refused, nothing else changes
        _patch_spec(cluster, "queued", {"queueName": "other-queue"})
        valid = wait_for(
            lambda: next(
                (c for c in status_of(cluster, "queued")["conditions"]
                 if c["type"] == "SpecValid" and c["status"] == "False"), None,
            ),
            message="the queue change refused",
        )  # fmt: skip
        assert valid["reason"] == "QueueNameChanged"
        assert (
            _job(cluster, "queued-r0-vote")["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
            == "gpu-queue"
        )


def test_invalid_spec_and_deletion(cluster: ClusterHandle):
    cluster.put(RUNS_PATH, run_manifest("broken", rounds=0))
    cluster.put(RUNS_PATH, run_manifest("doomed", voting={"shards": 1}))
    with operator():
        status = wait_for(
            lambda: (s := status_of(cluster, "broken")).get("phase") and s,
            message="invalid spec status",
        )
        assert status["phase"] == "Failed"
        spec_valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
        assert spec_valid["status"] == "False" and "spec.rounds" in spec_valid["message"]
        wait_for(lambda: _job(cluster, "doomed-r0-vote"), message="doomed vote Job")
        uid = cluster.api.get_run(NS, "doomed")["metadata"]["uid"]
        assert _job(cluster, "doomed-r0-vote")["metadata"]["ownerReferences"][0]["uid"] == uid
        wait_for(
            lambda: (
                metric(
                    scrape(cluster),
                    "evoquality_run_phase",
                    namespace=NS,
                    run="doomed",
                    phase="Pending",
                )
                == 1
            ),
            message="phase metric",
        )
        cluster.api.request("DELETE", f"{RUNS_PATH}/doomed")
        wait_for(lambda: cluster.api.get_run(NS, "doomed") is None, message="run deleted")
        wait_for(
            lambda: (
                not any(
                    ("doomed" in dict(k[1]).values())
                    for k in scrape(cluster)
                    if k[0] == "evoquality_run_phase"
                )
            ),
            message="metrics forgotten",
        )
        assert (
            metric(
                scrape(cluster), "evoquality_run_phase", namespace=NS, run="broken", phase="Failed"
            )
            == 1
        )
    assert not [j for j in cluster.created("jobs") if j.startswith("broken")]


def test_refuses_to_start_with_an_older_crd(
    kube_cluster: ClusterHandle, monkeypatch: pytest.MonkeyPatch
):
    kube_cluster.install_crd(revision="0")
    monkeypatch.setenv("EVOQUALITY_METRICS_PORT", str(free_port()))
    monkeypatch.setenv("EVOQUALITY_METRICS_ADDR", "127.0.0.1")
    runner = KopfRunner(
        ["run", "--standalone", "-A", "-m", "evoquality_operator.handlers"],
        timeout=30,
        reraise=False,
    )
    with runner:
        runner.future.result(timeout=20)  # the operator stops on its own
    assert runner.exit_code != 0
    assert "schema revision 0 is older" in runner.output + str(runner.exception)


def test_a_deleted_runs_spec_configmap_is_not_adopted(cluster: ClusterHandle):
    """A `<run>-spec` ConfigMap of a deleted run of the same name (not yet garbage-collected)
    is neither used nor adopted: no Job starts until the collector has removed it."""
    stale = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "demo-spec",
            "namespace": NS,
            "ownerReferences": [
                {"apiVersion": "evoquality.io/v1alpha1", "kind": "EvoQualityRun",
                 "name": "demo", "uid": "uid-of-a-deleted-run"}
            ],
        },
        "data": {"spec.json": "{}"},
    }  # fmt: skip
    configmaps = f"/api/v1/namespaces/{NS}/configmaps"
    cluster.put(configmaps, stale)
    cluster.put(RUNS_PATH, run_manifest())
    refused = ("configmaps", NS, "demo-spec")
    with operator():
        # two refusals: the first pass has ended (and the retry pass begun) without a Job
        wait_for(lambda: cluster.conflicts().count(refused) >= 2, timeout=30, message="retry")
        assert cluster.created("jobs") == []
        cluster.api.request("DELETE", f"{configmaps}/demo-spec")  # the garbage collector
        wait_for(lambda: cluster.created("jobs"), timeout=30, message="a Job after the GC")
        spec_map = cluster.api.request("GET", f"{configmaps}/demo-spec")
        uid = cluster.api.get_run(NS, "demo")["metadata"]["uid"]
        assert [o["uid"] for o in spec_map["metadata"]["ownerReferences"]] == [uid]


def _pod_for(job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """The pod the Job controller creates for `job`: the template's labels and job-name."""
    name = job["metadata"]["name"]
    labels = {**job["spec"]["template"]["metadata"]["labels"], "job-name": name}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-0-abcde", "namespace": NS, "labels": labels},
        "spec": {"containers": [{"name": "stage", "image": "registry.local/voter:1"}]},
        "status": status,
    }


def _waiting(cluster: ClusterHandle, run: str, reason: str) -> dict[str, Any]:
    """Wait until the run's PodsReady condition and a Warning Event both name `reason`."""

    def shown() -> dict[str, Any] | None:
        status = status_of(cluster, run)
        ready = next((c for c in status.get("conditions", []) if c["type"] == "PodsReady"), None)
        if ready is None or ready["reason"] != reason:
            return None
        events = [e for e in cluster.events(NS, run) if e["reason"] == reason]
        return ready if events and events[0]["type"] == "Warning" else None

    return wait_for(shown, message=f"{reason} in status and an Event")


def test_a_run_says_why_its_pods_wait(cluster: ClusterHandle):
    cluster.put(RUNS_PATH, run_manifest("waits", evaluation={"benchmarks": []}))
    pods = f"/api/v1/namespaces/{NS}/pods"
    with operator():
        job = wait_for(lambda: _job(cluster, "waits-r0-vote"), message="vote Job")
        # the Event is posted right after the Job is created: wait for it, do not race it
        started = wait_for(
            lambda: [e for e in cluster.events(NS, "waits") if e["reason"] == "StageStarted"],
            message="the StageStarted Event",
        )
        assert {e["type"] for e in started} == {"Normal"}
        cluster.api.request(  # the Job controller started it: a pod exists, none is Ready
            "PATCH", f"/apis/batch/v1/namespaces/{NS}/jobs/waits-r0-vote/status",
            body={"status": {"active": 1, "ready": 0, "startTime": now_iso()}},
            content_type="application/merge-patch+json",
        )  # fmt: skip
        unschedulable = {
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
        }  # fmt: skip
        cluster.put(pods, _pod_for(job, {"phase": "Pending", "conditions": [unschedulable]}))
        ready = _waiting(cluster, "waits", "Unschedulable")  # the scheduler's condition
        assert "Insufficient nvidia.com/gpu" in ready["message"]
        entry = status_of(cluster, "waits")["stages"]["r0-vote"]
        assert entry["state"] == "Pending" and entry["waitingReason"] == "Unschedulable"

        def kubelet(reason: str, message: str) -> None:  # the container's waiting state
            waiting = {"waiting": {"reason": reason, "message": message}}
            cluster.api.request(
                "PATCH", f"{pods}/waits-r0-vote-0-abcde",
                body={"status": {
                    "conditions": [{"type": "PodScheduled", "status": "True"}],
                    "containerStatuses": [{"name": "stage", "ready": False, "state": waiting}],
                }},
                content_type="application/merge-patch+json",
            )  # fmt: skip

        kubelet("ImagePullBackOff", 'Back-off pulling image "registry.local/voter:1"')
        assert "Back-off pulling" in _waiting(cluster, "waits", "ImagePullBackOff")["message"]
        kubelet("CreateContainerConfigError", 'secret "s3-creds" not found')
        config = _waiting(cluster, "waits", "CreateContainerConfigError")
        assert 'secret "s3-creds" not found' in config["message"]

        # no pod at all: the Job controller's FailedCreate Event on the Job says why
        cluster.put(
            f"/api/v1/namespaces/{NS}/events",
            {
                "apiVersion": "v1", "kind": "Event", "metadata": {"name": "waits-r0-vote.1"},
                "involvedObject": {"kind": "Job", "name": "waits-r0-vote", "namespace": NS},
                "type": "Warning", "reason": "FailedCreate",
                "message": 'Error creating: pods "waits-r0-vote-0-x" is forbidden: exceeded '
                "quota: gpu-quota",
                "lastTimestamp": "2025-01-01T00:01:00Z",
            },
        )  # fmt: skip
        cluster.api.request("DELETE", f"{pods}/waits-r0-vote-0-abcde")
        _annotate(cluster, "waits", poke="1")  # as the resync timer would
        assert "exceeded quota: gpu-quota" in _waiting(cluster, "waits", "FailedCreate")["message"]

        cluster.api.request(  # a Ready pod at last: running, nothing waits
            "PATCH", f"/apis/batch/v1/namespaces/{NS}/jobs/waits-r0-vote/status",
            body={"status": {"ready": 1}}, content_type="application/merge-patch+json",
        )  # fmt: skip
        wait_for(lambda: status_of(cluster, "waits").get("phase") == "Running")
        ready = next(
            c for c in status_of(cluster, "waits")["conditions"] if c["type"] == "PodsReady"
        )
        assert ready["status"] == "True"
    # the pod watch asks the API server for the operator's pods only
    watches = [p for p in cluster.operator_reads("pods") if p.get("watch") in ("true", "1", True)]
    assert watches and all(p.get("labelSelector") == MANAGED for p in watches)


def test_a_quota_refusal_fails_the_stage_with_the_apis_message(cluster: ClusterHandle):
    quota = (
        'jobs "quota-r0-vote" is forbidden: exceeded quota: gpu-quota, requested: '
        "nvidia.com/gpu=1, used: nvidia.com/gpu=8, limited: nvidia.com/gpu=8"
    )

    def admission(plural: str, obj: dict[str, Any]) -> tuple[int, str, str] | None:
        refused = plural == "jobs" and obj["metadata"]["name"].startswith("quota-")
        return (403, "Forbidden", quota) if refused else None

    cluster.set_admission(admission)
    cluster.put(RUNS_PATH, run_manifest("quota", evaluation={"benchmarks": []}))
    with operator():
        wait_for(lambda: status_of(cluster, "quota").get("phase") == "Failed", timeout=30)
        status = status_of(cluster, "quota")
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert "exceeded quota: gpu-quota" in failed["message"] and "403" in failed["message"]
        assert status["stages"]["r0-vote"]["failures"] == 2  # maxRetries 1, with backoff
        warnings = [e for e in cluster.events(NS, "quota") if e["reason"] == "StageFailed"]
        assert len(warnings) == 2 and {e["type"] for e in warnings} == {"Warning"}
    # two attempts, each refused once: no request storm
    posts = [n for m, n in cluster.operator_writes("jobs") if m == "POST"]
    assert len(posts) == 2


def test_a_refused_spec_configmap_fails_the_attempt_instead_of_retrying_every_few_seconds(
    cluster: ClusterHandle,
):
    def admission(plural: str, obj: dict[str, Any]) -> tuple[int, str, str] | None:
        if plural == "configmaps" and obj["metadata"]["name"] == "cm-spec":
            return 403, "Forbidden", 'configmaps "cm-spec" is forbidden: exceeded quota: count'
        return None

    cluster.set_admission(admission)
    cluster.put(RUNS_PATH, run_manifest("cm", evaluation={"benchmarks": []}))
    with operator():
        wait_for(lambda: status_of(cluster, "cm").get("phase") == "Failed", timeout=30)
        failed = next(c for c in status_of(cluster, "cm")["conditions"] if c["type"] == "Failed")
        assert "ConfigMap cm-spec was refused" in failed["message"]
        assert "exceeded quota: count" in failed["message"]
    assert not [n for m, n in cluster.operator_writes("jobs") if m == "POST"]  # never specless
    assert len([n for m, n in cluster.operator_writes("configmaps") if m == "POST"]) == 2
