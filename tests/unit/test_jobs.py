"""Stage Job manifests and the reading of finished Jobs (no cluster)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
from evoquality_operator import jobs
from evoquality_operator.reconcile import StageKey

from evoquality.spec import SpecError, load_run, parse_spec


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
    assert spec["suspend"] is True and "backoffLimit" not in spec  # per index instead
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
    assert container(rank)["resources"] == {"requests": {"ephemeral-storage": "50Gi"}}  # scratch
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
    assert main["args"][:4] == ["--no-python", "--", "evoquality", "stage"]
    env = {e["name"]: e["value"] for e in main["env"] if e["name"].startswith("PET_")}
    assert env == {"PET_STANDALONE": "1", "PET_NNODES": "1", "PET_NPROC_PER_NODE": "8"}
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
    assert container(job)["args"][:5] == ["--no-python", "--", "evoquality", "stage", "train"]
    env = {e["name"]: e for e in container(job)["env"]}
    assert env["PET_MASTER_ADDR"]["value"] == "demo-r2-train-a1-0.demo-r2-train-svc"
    assert env["PET_MASTER_PORT"]["value"] == "29500" and env["PET_NNODES"]["value"] == "4"
    assert env["PET_NODE_RANK"]["valueFrom"]["fieldRef"] == {
        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    }
    assert "PET_STANDALONE" not in env


EXAMPLE_7B = Path(__file__).parents[2] / "examples" / "qwen2.5-vl-7b.yaml"


def example_7b(**training) -> jobs.RunContext:
    run = load_run(EXAMPLE_7B)
    spec = run.spec.model_copy(update={"training": run.spec.training.model_copy(update=training)})
    return jobs.RunContext(run.metadata.namespace, run.metadata.name, "uid-1", spec)


def rendered_launcher_args(context: jobs.RunContext, node_rank: int, monkeypatch):
    """The rendered train container's command and args, parsed by torch's own launcher parser
    with the container's env (the completion-index annotation resolved to `node_rank`)."""
    from torch.distributed.run import get_args_parser

    main = container(jobs.stage_job(context, StageKey(0, "train"), 1, suspend=False))
    for name in [n for n in os.environ if n.startswith("PET_")]:
        monkeypatch.delenv(name)
    for var in main["env"]:
        if "value" in var:
            monkeypatch.setenv(var["name"], var["value"])
        elif var["name"] == "PET_NODE_RANK":
            monkeypatch.setenv(var["name"], str(node_rank))
    assert main["command"] == ["torchrun"]
    stage_args = main["args"][main["args"].index("evoquality") + 1 :]
    return get_args_parser().parse_args(main["args"]), stage_args  # the parser reads PET_* now


STAGE_ARGS_7B = [
    "stage",
    "train",
    "--run",
    "s3://my-iqa-bucket/evoquality-runs/evoquality/qwen2-5-vl-7b",
    "--round",
    "0",
    "--spec",
    "/etc/evoquality/spec.json",
]


def test_the_7b_train_command_reaches_evoquality_through_torchrun(monkeypatch):
    parsed, stage_args = rendered_launcher_args(example_7b(), 0, monkeypatch)
    assert stage_args == STAGE_ARGS_7B
    assert (parsed.training_script, parsed.training_script_args) == ("evoquality", STAGE_ARGS_7B)
    assert parsed.no_python and parsed.standalone
    assert (parsed.nnodes, parsed.nproc_per_node) == ("1", "8")


def test_the_7b_train_command_on_two_nodes_rendezvous_on_index_0(monkeypatch):
    parsed, _ = rendered_launcher_args(example_7b(nodes=2), 1, monkeypatch)
    assert (parsed.training_script, parsed.training_script_args) == ("evoquality", STAGE_ARGS_7B)
    assert (parsed.nnodes, parsed.nproc_per_node, parsed.node_rank) == ("2", "8", 1)
    assert parsed.master_addr == "qwen2-5-vl-7b-r0-train-a1-0.qwen2-5-vl-7b-r0-train-svc"
    assert parsed.master_port == 29500 and not parsed.standalone


def test_the_old_train_argv_is_refused_by_torchrun():
    """Negative control: without `--`, torchrun reads the stage's `--run` as its own option."""
    from torch.distributed.run import get_args_parser

    old = ["--standalone", "--nnodes", "1", "--nproc-per-node", "8", "--no-python", "evoquality"]
    with pytest.raises(SystemExit) as exited:
        get_args_parser().parse_args(old + STAGE_ARGS_7B)
    assert exited.value.code == 2


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


def test_a_runs_resources_merge_per_key_over_the_charts_stage_defaults():
    defaults = {
        "rank": {"resources": {"requests": {"cpu": "2", "memory": "8Gi"}}},
        "train": {"resources": {"limits": {"memory": "1Ti", "nvidia.com/gpu": "2"}}},
        "eval": {"resources": {"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"cpu": "8"}}},
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
    assert rank["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi", "ephemeral-storage": "50Gi"}
    }
    train = container(jobs.stage_job(c, StageKey(0, "train"), 0, suspend=False))
    assert train["resources"]["limits"] == {"memory": "1Ti", "nvidia.com/gpu": "4"}  # spec's GPUs
    evaluation = container(jobs.stage_job(c, StageKey(0, "eval"), 0, suspend=False))
    # the run's limit wins key by key; the chart's requests stay (no BestEffort GPU pod)
    assert evaluation["resources"]["limits"] == {"cpu": "3", "nvidia.com/gpu": "1"}
    assert evaluation["resources"]["requests"] == {
        "cpu": "4",
        "memory": "32Gi",
        "ephemeral-storage": "50Gi",
        "nvidia.com/gpu": "1",
    }


# --- failure policy per stage (docs/operator.md, "Failure policy") ---------------------------


def test_vote_shards_fail_per_index():
    spec = jobs.stage_job(ctx(voting={"shards": 5}), StageKey(0, "vote"), 0, suspend=False)["spec"]
    assert spec["backoffLimitPerIndex"] == jobs.VOTE_RETRIES_PER_INDEX == 1
    assert spec["maxFailedIndexes"] == 2  # more than half of 5 failed: stop the rest
    ignore, fail_index = spec["podFailurePolicy"]["rules"]
    assert ignore == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert fail_index == {
        "action": "FailIndex",
        "onExitCodes": {"containerName": "stage", "operator": "In", "values": [2]},
    }
    assert fail_index["onExitCodes"]["containerName"] == container({"spec": spec})["name"]


@pytest.mark.parametrize(
    ("stage", "training"),
    [
        ("rank", {}),
        ("eval", {}),
        ("train", {"gpusPerNode": 1}),
        ("train", {"gpusPerNode": 8}),
        ("train", {"nodes": 2, "gpusPerNode": 8}),
    ],
)
def test_other_stages_leave_retries_to_the_operator(stage, training):
    spec = jobs.stage_job(ctx(training=training), StageKey(0, stage), 0, suspend=False)["spec"]
    assert spec["backoffLimit"] == 0
    assert "backoffLimitPerIndex" not in spec and "maxFailedIndexes" not in spec
    gang = training.get("nodes", 1) > 1  # a replaced member cannot join a static torchrun group
    rules = jobs.GANG_DISRUPTION_RULES if gang else jobs.DISRUPTION_RULES
    assert spec["podFailurePolicy"] == {"rules": list(rules)}


def test_the_stage_learns_its_termination_message_path():
    job = jobs.stage_job(ctx(), StageKey(0, "rank"), 0, suspend=False)
    env = {e["name"]: e.get("value") for e in container(job)["env"]}
    assert env["EVOQUALITY_TERMINATION_LOG"] == container(job)["terminationMessagePath"]


@pytest.mark.parametrize(
    ("stage", "training"),
    [("vote", {}), ("train", {"gpusPerNode": 8}), ("train", {"nodes": 2, "gpusPerNode": 8})],
)
def test_stage_jobs_are_valid_kubernetes_objects(stage, training):
    import kubernetes_validate

    job = jobs.stage_job(ctx(training=training), StageKey(0, stage), 0, suspend=False)
    kubernetes_validate.validate(job, "1.33.0", strict=True)  # backoffLimitPerIndex: GA in 1.33


def test_gpu_pods_without_cpu_or_memory_requests_are_warned_about():
    bare = ctx()  # no chart defaults: every GPU pod would be BestEffort for cpu and memory
    assert jobs.resource_warnings(bare) == [
        "pods.vote: a GPU pod without cpu or memory requests",
        "pods.train: a GPU pod without cpu or memory requests",
        "pods.eval: a GPU pod without cpu or memory requests",
    ]
    requests = {"requests": {"cpu": "8", "memory": "64Gi"}}
    spec = {stage: {"resources": requests} for stage in ("vote", "train", "eval")}
    assert jobs.resource_warnings(ctx(pods=spec)) == []
    rank_only = ctx(model={"engine": "transformers"}, training={"gpusPerNode": 0})
    assert jobs.resource_warnings(rank_only) == []  # no GPU pod at all


def test_a_request_above_its_limit_is_refused():
    with pytest.raises(SpecError, match=r"requests.memory \(64Gi\) is above its limit \(32Gi\)"):
        ctx(
            pods={
                "eval": {
                    "resources": {"requests": {"memory": "64Gi"}, "limits": {"memory": "32Gi"}}
                }
            }
        )
    ctx(pods={"eval": {"resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "1"}}}})


def test_finished_jobs_are_deleted_after_a_day_unless_the_run_keeps_them():
    key = StageKey(0, "rank")
    assert jobs.stage_job(ctx(), key, 0, False)["spec"]["ttlSecondsAfterFinished"] == 86400
    kept = ctx(pods={"ttlSecondsAfterFinished": None})
    assert "ttlSecondsAfterFinished" not in jobs.stage_job(kept, key, 0, False)["spec"]
    with pytest.raises(SpecError, match="ttlSecondsAfterFinished"):
        ctx(pods={"ttlSecondsAfterFinished": 60})  # deleted before the operator reads it


def test_kueue_labels_carry_the_priority_class():
    job = jobs.stage_job(
        ctx(queueName="gpu-queue", priorityClass="research-low"), StageKey(0, "rank"), 0, True
    )
    labels = job["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert labels["kueue.x-k8s.io/priority-class"] == "research-low"
    with pytest.raises(SpecError, match="priorityClass .* needs queueName"):
        ctx(priorityClass="research-low")


def _waiting_pod(state=None, conditions=(), phase="Pending"):
    status = {"phase": phase, "conditions": list(conditions)}
    if state is not None:
        status["containerStatuses"] = [{"name": "stage", "ready": False, "state": state}]
    return {"metadata": {"name": "demo-r0-vote-0-abcde"}, "status": status}


@pytest.mark.parametrize(
    ("pod", "reason", "detail"),
    [
        (
            _waiting_pod(
                {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling"}}
            ),
            "ImagePullBackOff",
            "Back-off pull",
        ),
        (
            _waiting_pod(
                {
                    "waiting": {
                        "reason": "CreateContainerConfigError",
                        "message": 'secret "s3-creds" not found',
                    }
                }  # fmt: skip
            ),
            "CreateContainerConfigError",
            's3-creds" not found',
        ),
        (
            _waiting_pod(
                conditions=[
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
                    }
                ]
            ),  # fmt: skip
            "Unschedulable",
            "Insufficient nvidia.com/gpu",
        ),
    ],
)
def test_why_a_pod_waits_is_read_from_its_status(pod, reason, detail):
    found = jobs.waiting_signal([pod])
    assert found is not None and found[0] == reason
    assert detail in found[1] and "demo-r0-vote-0-abcde" in found[1]


def test_normal_waiting_and_finished_pods_are_no_signal_and_events_explain_missing_pods():
    creating = _waiting_pod({"waiting": {"reason": "ContainerCreating"}})
    failed = _waiting_pod({"waiting": {"reason": "ErrImagePull"}}, phase="Failed")
    assert jobs.waiting_signal([creating, failed]) is None
    events = [
        {"reason": "SuccessfulCreate", "message": "x", "lastTimestamp": "2025-01-01T00:00:09Z"},
        {"reason": "FailedCreate", "involvedObject": {"kind": "Job", "name": "demo-r0-vote"},
         "message": "old", "lastTimestamp": "2025-01-01T00:00:01Z"},
        {"reason": "FailedCreate", "involvedObject": {"kind": "Job", "name": "demo-r0-vote"},
         "message": 'pods "demo-r0-vote-0-x" is forbidden: exceeded quota: gpu',
         "lastTimestamp": "2025-01-01T00:00:05Z"},
    ]  # fmt: skip
    reason, text = jobs.waiting_signal([], events)
    assert reason == "FailedCreate" and "exceeded quota: gpu" in text and "old" not in text


def test_a_gang_failed_by_a_disruption_is_observed_as_disrupted():
    job = jobs.stage_job(ctx(training={"nodes": 2}), StageKey(0, "train"), 0, suspend=False)
    failed = {
        **job,
        "status": {
            "failed": 1,
            "ready": 1,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "PodFailurePolicy",
                    "message": "Pod ml/demo-r0-train-1-x has condition DisruptionTarget matching "
                    "FailJob rule at index 0",
                }
            ],
        },
    }
    observed = jobs.observe_job(failed)
    assert observed.state == "Failed" and observed.disrupted and observed.expected == 2
    crashed = copy.deepcopy(failed)
    crashed["status"]["conditions"][0].update(reason="BackoffLimitExceeded", message="")
    assert not jobs.observe_job(crashed).disrupted
