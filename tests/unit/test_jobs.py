"""Stage Job manifests and the reading of finished Jobs (no cluster)."""

from __future__ import annotations

import json

from evoquality_operator import jobs
from evoquality_operator.reconcile import StageKey

from evoquality.spec import parse_spec


def ctx(**spec):
    base = {"data": {"manifest": "s3://b/pool.csv"}, "storage": {"uri": "s3://b/runs"}}
    base.update(spec)
    return jobs.RunContext(
        "ml", "demo", "uid-1", parse_spec(base), jobs.Images("v:1", "t:1", "w:1")
    )


def container(job):
    return job["spec"]["template"]["spec"]["containers"][0]


def test_vote_job_is_indexed_with_pod_settings():
    c = ctx(
        voting={"shards": 8, "parallelism": 3},
        queueName="q",
        pods={
            "vote": {
                "nodeSelector": {"gpu": "a100"},
                "tolerations": [{"key": "gpu"}],
                "priorityClassName": "high",
                "serviceAccountName": "runner",
                "imagePullSecrets": ["reg"],
                "activeDeadlineSeconds": 600,
                "env": [{"name": "HF_TOKEN", "secretName": "hf"}, {"name": "X", "value": "1"}],
                "affinity": {"nodeAffinity": {}},
            },
            "modelCachePvc": "models",
        },
    )
    job = jobs.stage_job(c, StageKey(0, "vote"), 1, suspend=True)
    assert job["metadata"]["name"] == "demo-r0-vote-a1"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "evoquality.io/v1alpha1",
        "kind": "EvoQualityRun",
        "name": "demo",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    spec = job["spec"]
    assert spec["suspend"] is True and spec["backoffLimit"] == 0
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 8, 3)
    assert spec["podReplacementPolicy"] == "Failed" and spec["activeDeadlineSeconds"] == 600
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["priorityClassName"] == "high" and pod["serviceAccountName"] == "runner"
    assert pod["imagePullSecrets"] == [{"name": "reg"}] and pod["tolerations"] == [{"key": "gpu"}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "models"}
    assert volumes["spec"]["configMap"] == {"name": "demo-spec"}
    main = container(job)
    assert main["image"] == "v:1" and main["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"  # vLLM, tensorParallel 1
    env = {e["name"]: e for e in main["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "HF_TOKEN"}
    assert env["HF_HOME"]["value"] == "/models"
    assert env["EVOQUALITY_ATTEMPT_ID"]["value"] == "demo-r0-vote-a1"


def test_stage_images_and_commands():
    c = ctx(model={"engine": "transformers"}, training={"gpusPerNode": 0})
    rank = jobs.stage_job(c, StageKey(1, "rank"), 0, suspend=False)
    assert container(rank)["image"] == "w:1" and "completionMode" not in rank["spec"]
    assert container(rank)["command"] == ["evoquality"]
    assert container(rank)["args"][:6] == [
        "stage",
        "rank",
        "--run",
        "s3://b/runs/ml/demo",
        "--round",
        "1",
    ]
    assert "resources" not in container(rank)
    base = jobs.stage_job(c, StageKey(None, "eval"), 0, suspend=False)
    assert base["metadata"]["name"] == "demo-base-eval"
    assert "--round" in container(base)["args"] and "base" in container(base)["args"]
    assert container(jobs.stage_job(c, StageKey(0, "train"), 0, False))["image"] == "t:1"


def test_single_node_training_takes_all_gpus():
    c = ctx(training={"gpusPerNode": 8})
    job = jobs.stage_job(c, StageKey(0, "train"), 0, suspend=False)
    main = container(job)
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert main["command"] == ["torchrun"]
    assert main["args"][:5] == ["--standalone", "--nnodes", "1", "--nproc-per-node", "8"]
    assert "completionMode" not in job["spec"]
    assert [o["kind"] for o in jobs.stage_objects(c, StageKey(0, "train"), 0, False)] == ["Job"]


def test_multi_node_training_is_an_indexed_gang_with_a_headless_service():
    c = ctx(training={"nodes": 4, "gpusPerNode": 8})
    service, job = jobs.stage_objects(c, StageKey(2, "train"), 1, False)
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["name"] == "demo-r2-train-svc"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "demo-r2-train-svc"
    labels = spec["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    args = container(job)["args"]
    assert args[args.index("--master-addr") + 1] == "demo-r2-train-a1-0.demo-r2-train-svc"
    assert args[args.index("--node-rank") + 1] == "$(NODE_RANK)"
    assert args[args.index("--no-python") + 1 :][:3] == ["evoquality", "stage", "train"]


def test_spec_configmap_holds_the_validated_spec():
    cm = jobs.spec_configmap(ctx())
    data = json.loads(cm["data"]["spec.json"])
    assert data["storage"]["uri"] == "s3://b/runs" and data["rounds"] == 2
    assert cm["metadata"]["name"] == "demo-spec"


def _pod(index, phase, message, finished="2025-01-01T00:00:00Z"):
    return {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "status": {
            "phase": phase,
            "containerStatuses": [
                {
                    "state": {
                        "terminated": {"message": message, "finishedAt": finished, "exitCode": 0}
                    }
                }
            ],
        },
    }


def _job(labels, conditions, **status):
    return {
        "metadata": {"name": "demo-r0-vote", "labels": labels},
        "spec": {},
        "status": {"conditions": conditions, **status},
    }


LABELS = {"evoquality.io/round": "0", "evoquality.io/stage": "vote", "evoquality.io/attempt": "0"}


def test_reading_a_completed_voting_job():
    summary = {"stage": "vote", "round": 0, "metrics": {"pairs": 5}}
    pods = [
        _pod(0, "Succeeded", "log line\n" + json.dumps({**summary, "shard": 0})),
        _pod(1, "Failed", "preempted"),
        _pod(1, "Succeeded", json.dumps({**summary, "shard": 1})),
        _pod(2, "Succeeded", json.dumps({"stage": "rank", "metrics": {}})),
    ]
    job = _job(LABELS, [{"type": "Complete", "status": "True"}], startTime="t0")
    observed = jobs.observe_job(job, pods)
    assert observed.state == "Succeeded" and observed.start_time == "t0"
    assert [s["shard"] for s in observed.summaries] == [0, 1]  # wrong-stage summary ignored


def test_reading_a_failed_job_takes_the_last_pod_message():
    pods = [
        _pod(0, "Failed", "old", "2025-01-01T00:00:00Z"),
        _pod(0, "Failed", "RuntimeError: CUDA OOM", "2025-01-01T00:05:00Z"),
    ]
    job = _job(LABELS, [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    assert jobs.observe_job(job, pods).message == "RuntimeError: CUDA OOM"
    assert jobs.observe_job(job, []).message == "BackoffLimitExceeded"
    running = _job(LABELS, [], active=1)
    assert jobs.observe_job(running).state == "Running"
    assert jobs.observe_job({"metadata": {"name": "x", "labels": {}}}) is None


def test_parse_summary():
    assert jobs.parse_summary(None) is None
    assert jobs.parse_summary("no json here") is None
    text = 'progress\n{"stage": "train", "metrics": {"kl": 0.1}}\n'
    assert jobs.parse_summary(text)["metrics"] == {"kl": 0.1}


# --- startup checks, status patches, flags ----------------------------------------------------


def test_crd_revision_check():
    from evoquality_operator.k8s import check_crd_revision

    def crd(revision):
        return {"metadata": {"annotations": {"evoquality.io/schema-revision": revision}}}

    assert check_crd_revision(crd("3"), expected="3")[0] is True
    ok, message = check_crd_revision(crd("2"), expected="3")
    assert not ok and "older" in message and "kubectl apply" in message
    assert check_crd_revision(crd("4"), expected="3")[0] is True
    assert check_crd_revision({"metadata": {}}, expected="3")[0] is False
    assert check_crd_revision(None)[0] is False


def test_merge_patch_removes_and_updates():
    from evoquality_operator.k8s import merge_patch

    old = {"phase": "Running", "retryAt": "x", "stages": {"a": {"state": "Running", "n": 1}}}
    new = {"phase": "Running", "stages": {"a": {"state": "Succeeded", "n": 1}}, "round": 1}
    assert merge_patch(old, new) == {
        "retryAt": None,
        "stages": {"a": {"state": "Succeeded"}},
        "round": 1,
    }
    assert merge_patch(new, new) is None


def test_flags(monkeypatch):
    from evoquality_operator.__main__ import parse_config

    monkeypatch.setenv("EVOQUALITY_TRAINER_IMAGE", "reg/trainer:2")
    config, _ = parse_config(
        ["-n", "a", "--namespace", "b", "--metrics-port", "9100", "--voter-image", "reg/voter:2"]
    )
    assert config.namespaces == ("a", "b") and not config.all_namespaces
    assert config.metrics_port == 9100
    assert config.images == jobs.Images(
        "reg/voter:2", "reg/trainer:2", jobs.DEFAULT_IMAGES["worker"]
    )
    monkeypatch.delenv("EVOQUALITY_NAMESPACES", raising=False)
    config, _ = parse_config(["--all-namespaces"])
    assert config.all_namespaces and config.namespaces == ()


def test_stage_defaults_from_the_chart_apply_when_the_run_sets_none():
    defaults = {
        "rank": {"resources": {"requests": {"cpu": "2", "memory": "8Gi"}}},
        "train": {"resources": {"limits": {"memory": "1Ti", "nvidia.com/gpu": "2"}}},
    }
    images = jobs.Images.from_env({jobs.STAGE_DEFAULTS_ENV: json.dumps(defaults)})
    spec = parse_spec(
        {
            "data": {"manifest": "s3://b/pool.csv"},
            "storage": {"uri": "s3://b/runs"},
            "training": {"gpusPerNode": 4},
            "pods": {"eval": {"resources": {"limits": {"cpu": "3"}}}},
        }
    )
    c = jobs.RunContext("ml", "demo", "uid-1", spec, images)
    rank = container(jobs.stage_job(c, StageKey(0, "rank"), 0, suspend=False))
    assert rank["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}}
    train = container(jobs.stage_job(c, StageKey(0, "train"), 0, suspend=False))
    assert train["resources"]["limits"] == {"memory": "1Ti", "nvidia.com/gpu": "4"}  # spec's GPUs
    evaluation = container(jobs.stage_job(c, StageKey(0, "eval"), 0, suspend=False))
    assert evaluation["resources"]["limits"]["cpu"] == "3"  # the run's own settings win
