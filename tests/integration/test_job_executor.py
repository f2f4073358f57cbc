"""The test Job executor on small hand-written Jobs (shell commands, seconds): what it executes
and what it writes back, before tests/e2e/test_executed_jobs.py trusts it with the operator's."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from tests.plugins.job_executor import JobExecutor, LocalImage
from tests.plugins.kmock_cluster import ClusterHandle, wait_for

NS = "exec"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
MESSAGE = "/dev/termination-log"


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "busybox",
        "command": ["sh", "-c", script],
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "OUT", "value": "/data/$(TOKEN)"},
            # paths as whole values: the executor rewrites those, not paths inside a script
            {"name": "DATA", "value": "/data"},
            {"name": "SETTINGS", "value": "/etc/settings"},
            {"name": "MSG", "value": MESSAGE},
        ],
        "volumeMounts": [
            {"name": "settings", "mountPath": "/etc/settings"},
            {"name": "data", "mountPath": "/data"},
        ],
        "terminationMessagePath": MESSAGE,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    template = {
        "metadata": {"labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": [
                {"name": "settings", "configMap": {"name": "settings"}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}},
            ],
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"template": template, **spec},
    }


def setup(cluster: ClusterHandle) -> None:
    token = base64.b64encode(b"t0k3n").decode()
    cluster.put(
        f"/api/v1/namespaces/{NS}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds"},
            "data": {"token": token},
        },
    )
    cluster.put(
        f"/api/v1/namespaces/{NS}/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "data": {"greeting": "hi"},
        },
    )


def finished(cluster: ClusterHandle, name: str) -> dict[str, Any] | None:
    body = cluster.api.request("GET", f"{JOBS}/{name}")
    types = {c["type"] for c in (body.get("status") or {}).get("conditions") or []}
    return body if types & {"Complete", "Failed"} else None


def pods(cluster: ClusterHandle, name: str) -> list[dict[str, Any]]:
    return cluster.api.list("v1", "Pod", NS, f"job-name={name}")


def test_indexed_job_runs_as_rendered(cluster: ClusterHandle, job_executor):
    setup(cluster)
    script = (
        'mkdir -p "$OUT"; echo "$JOB_COMPLETION_INDEX $HOSTNAME" > "$OUT/$(JOB_COMPLETION_INDEX)";'
        ' ls "$OUT" | wc -l > "$DATA/seen-$JOB_COMPLETION_INDEX";'
        ' printf \'{"index": %s, "greeting": "%s"}\' $JOB_COMPLETION_INDEX'
        ' "$(cat "$SETTINGS/greeting")" > "$MSG"'
    )
    cluster.put(JOBS, job("idx", script, completionMode="Indexed", completions=3, parallelism=2))
    executor: JobExecutor = job_executor(NS, default_image=LocalImage(env={}))
    body = wait_for(lambda: finished(cluster, "idx"), 30, 0.1, "the Job")
    assert [c["type"] for c in body["status"]["conditions"]] == ["SuccessCriteriaMet", "Complete"]
    assert body["status"]["completedIndexes"] == "0-2" and body["status"]["succeeded"] == 3
    found = sorted(pods(cluster, "idx"), key=lambda p: p["metadata"]["name"])
    assert [
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in found
    ] == ["0", "1", "2"]
    for index, pod in enumerate(found):
        assert pod["metadata"]["labels"]["app"] == "idx" and pod["status"]["phase"] == "Succeeded"
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert json.loads(terminated["message"]) == {"index": index, "greeting": "hi"}
    run = executor.pods_of("idx")
    assert all(p.env["OUT"].endswith("/pvc/shared/t0k3n") for p in run)  # secret, $(VAR), mount
    files = sorted(p.name for p in (executor.root / "pvc" / "shared" / "t0k3n").iterdir())
    assert files == ["0", "1", "2"]
    # parallelism 2: index 2 started only after 0 or 1 ended
    first_end = min(p.ended_at for p in run if p.index < 2)
    assert next(p for p in run if p.index == 2).started_at >= first_end
    assert executor.errors == []


def test_per_index_retries_and_fail_index(cluster: ClusterHandle, job_executor):
    setup(cluster)
    # index 0 fails once (exit 1), index 1 always exits 2 (FailIndex), index 2 succeeds
    script = (
        'i=$JOB_COMPLETION_INDEX; if [ "$i" = 1 ]; then echo bad input; exit 2; fi;'
        ' if [ "$i" = 0 ] && [ ! -f "$DATA/tried" ]; then touch "$DATA/tried"; exit 1; fi'
    )
    policy = {
        "rules": [
            {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [2]}},
        ]
    }
    spec = dict(
        completionMode="Indexed",
        completions=3,
        parallelism=3,
        backoffLimitPerIndex=1,
        maxFailedIndexes=1,
        podFailurePolicy=policy,
    )
    cluster.put(JOBS, job("retry", script, **spec))
    executor: JobExecutor = job_executor(NS, default_image=LocalImage(env={}))
    body = wait_for(lambda: finished(cluster, "retry"), 30, 0.1, "the Job")
    status = body["status"]
    assert status["conditions"][-1]["type"] == "Failed"
    assert status["conditions"][-1]["reason"] == "FailedIndexes"
    assert (status["completedIndexes"], status["failedIndexes"]) == ("0,2", "1")
    by_index: dict[int, list[int | None]] = {}
    for pod in executor.pods_of("retry"):
        by_index.setdefault(pod.index, []).append(pod.exit_code)
    assert by_index == {0: [1, 0], 1: [2], 2: [0]}
    failed = [p for p in pods(cluster, "retry") if p["status"]["phase"] == "Failed"]
    messages = {
        p["status"]["containerStatuses"][0]["state"]["terminated"]["message"] for p in failed
    }
    assert messages == {"", "bad input"}  # FallbackToLogsOnError: the log tail, if any


def test_a_missing_executable_fails_the_pod_with_start_error(cluster: ClusterHandle, job_executor):
    setup(cluster)
    manifest = job("nostart", "true", backoffLimit=0)
    manifest["spec"]["template"]["spec"]["containers"][0]["command"] = ["no-such-program"]
    cluster.put(JOBS, manifest)
    executor: JobExecutor = job_executor(NS, default_image=LocalImage(env={}))
    body = wait_for(lambda: finished(cluster, "nostart"), 30, 0.1, "the Job")
    assert body["status"]["conditions"][-1]["reason"] == "BackoffLimitExceeded"
    assert [p.exit_code for p in executor.pods_of("nostart")] == [128]


def test_suspend_terminates_and_deletes_running_pods(cluster: ClusterHandle, job_executor):
    setup(cluster)
    cluster.put(JOBS, job("sleepy", "sleep 60"))
    executor: JobExecutor = job_executor(NS, default_image=LocalImage(env={}), grace_s=2)
    wait_for(lambda: executor.running("sleepy"), 30, 0.1, "the pod")
    cluster.api.request(
        "PATCH",
        f"{JOBS}/sleepy",
        body={"spec": {"suspend": True}},
        content_type="application/merge-patch+json",
    )
    wait_for(lambda: not pods(cluster, "sleepy"), 30, 0.1, "the pod deleted")
    (pod,) = executor.pods_of("sleepy")
    assert pod.terminated and pod.proc is not None and pod.proc.poll() is not None
    body = cluster.api.request("GET", f"{JOBS}/sleepy")
    assert body["status"]["active"] == 0
    assert [c["type"] for c in body["status"]["conditions"]] == ["Suspended"]


def test_an_evicted_member_fails_a_two_node_gang_which_the_operator_retries_whole(
    cluster: ClusterHandle, job_executor, tmp_path
):
    """The rendered 2-node train Job under the executor: one node's pod is evicted; the Job
    fails at once (FailJob on DisruptionTarget), the other node's pod is stopped, and the
    operator's reconcile starts a new attempt at once without counting a failure."""
    from evoquality_operator import jobs as operator_jobs
    from evoquality_operator.reconcile import CreateJob, RunRef, StageKey, reconcile

    from evoquality.spec import parse_spec

    spec = {
        "data": {"manifest": "s3://b/pool.csv"},
        "storage": {"uri": "s3://b/runs"},
        "training": {"nodes": 2, "gpusPerNode": 1},
        "retries": {"maxRetries": 0},
    }
    ctx = operator_jobs.RunContext(NS, "gang", "uid-1", parse_spec(spec), operator_jobs.Images())
    key = StageKey(0, "train")
    cluster.put(f"/api/v1/namespaces/{NS}/configmaps", operator_jobs.spec_configmap(ctx))
    for obj in operator_jobs.stage_objects(ctx, key, 0, suspend=False):
        plural = "services" if obj["kind"] == "Service" else "jobs"
        group = "api/v1" if obj["kind"] == "Service" else "apis/batch/v1"
        cluster.put(f"/{group}/namespaces/{NS}/{plural}", obj)
    node = tmp_path / "node-bin"  # the trainer image's torchrun: a rank that trains forever
    node.mkdir()
    (node / "torchrun").write_text("#!/bin/sh\nexec sleep 300\n")
    (node / "torchrun").chmod(0o755)
    executor: JobExecutor = job_executor(NS, default_image=LocalImage(bin_dir=node), grace_s=2)
    name = "gang-r0-train"
    wait_for(lambda: len(executor.running(name)) == 2, timeout=30, message="both nodes running")
    wait_for(
        lambda: cluster.api.request("GET", f"{JOBS}/{name}").get("status", {}).get("ready") == 2,
        message="status.ready counts both nodes",
    )
    executor.evict(executor.running(name)[1])
    failed = wait_for(lambda: finished(cluster, name), timeout=30, message="the gang failed")
    condition = next(c for c in failed["status"]["conditions"] if c["type"] == "Failed")
    assert condition["reason"] == "PodFailurePolicy" and "DisruptionTarget" in condition["message"]
    wait_for(lambda: not executor.active(name), timeout=30, message="the other node stopped")
    assert len(executor.pods_of(name)) == 2  # no replacement pod joined the dead group

    observed = operator_jobs.observe_job(failed)
    assert observed.disrupted
    status: dict[str, Any] = {"stages": {}}
    for stage, state in (("vote", "Succeeded"), ("rank", "Succeeded"), ("train", "Running")):
        entry = {"round": "0", "stage": stage, "attempt": 0, "state": state}
        status["stages"][f"r0-{stage}"] = {**entry, "job": f"gang-r0-{stage}"}
    actions, status = reconcile(RunRef(NS, "gang"), spec, status, [observed], datetime.now(UTC))
    assert [a.name for a in actions if isinstance(a, CreateJob)] == ["gang-r0-train-a1"]
    entry = status["stages"][key.id]
    assert entry["disruptions"] == 1 and "failures" not in entry and status["phase"] != "Failed"
