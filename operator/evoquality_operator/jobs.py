"""Manifests of a run's children (spec ConfigMap, stage Jobs, headless Service) and the reading
of finished Jobs (state, stage summaries from termination messages). Pure functions, no I/O.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from evoquality import rollout_server
from evoquality.spec import API_GROUP, API_VERSION, KIND, EvoQualityRunSpec, PodSpec, spec_to_dict

from . import naming
from .reconcile import FAILED, PENDING, RUNNING, SUCCEEDED, ObservedJob, StageKey

SPEC_MOUNT = "/etc/evoquality"
SPEC_FILE = f"{SPEC_MOUNT}/spec.json"
SPEC_KEY = "spec.json"
MODEL_CACHE = "/models"
TERMINATION_LOG = "/dev/termination-log"
RENDEZVOUS_PORT = 29500
GPU = "nvidia.com/gpu"
EPHEMERAL_STORAGE = "ephemeral-storage"
SCRATCH = "/scratch"  # EVOQUALITY_CACHE: training scratch, downloaded checkpoints and images
STAGE_UID = 10001  # the images' user (images/*/Dockerfile)
# PodSecurity `restricted` (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "privileged": False,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
DEFAULT_IMAGES = {
    "voter": "evoquality/voter:dev",
    "trainer": "evoquality/trainer:dev",
    "worker": "evoquality/worker:dev",
}
IMAGE_ENV = {
    "voter": "EVOQUALITY_VOTER_IMAGE",
    "trainer": "EVOQUALITY_TRAINER_IMAGE",
    "worker": "EVOQUALITY_WORKER_IMAGE",
}
STAGE_DEFAULTS_ENV = "EVOQUALITY_STAGE_DEFAULTS"
STAGE_IMAGE_KIND = {"vote": "voter", "eval": "voter", "train": "trainer", "rank": "worker"}
CONTAINER = "stage"  # the one container of every stage pod
ROLLOUT_CONTAINER = "rollout-server"  # train pods with vLLM rollouts: a native sidecar
ROLLOUT_SYNC_DIR = "/rollout-weights"  # both containers: the trainer writes, vLLM reloads
ROLLOUT_PROBE_PERIOD_S = 10
# A vote shard's pod that fails is replaced this many times within its Job (its index only).
VOTE_RETRIES_PER_INDEX = 1
# `evoquality` exits 2 on errors a retry cannot fix (bad arguments, spec, inputs; so does
# torchrun on bad arguments): such a vote shard is not retried within the Job.
NO_RETRY_EXIT_CODES = (2,)
# Evicted or preempted pods do not count as failures (the Job replaces them)...
DISRUPTION_RULES = (
    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
)
# ... except in a multi-node gang: a static torchrun group cannot take a replaced member, so the
# whole attempt fails (the operator retries it at once without counting it, see reconcile).
GANG_DISRUPTION_RULES = (
    {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
)
# Container waiting reasons that are progress, not a problem.
NORMAL_WAITING = ("ContainerCreating", "PodInitializing")


@dataclass(frozen=True)
class Images:
    """Defaults per stage from the operator's environment (the chart's values).

    The image per image kind (a stage's `pods.<stage>.image` wins), and the pod resources per
    stage from `EVOQUALITY_STAGE_DEFAULTS` (JSON `{stage: {resources: ...}}`; a run's own
    `pods.<stage>.resources` wins).
    """

    voter: str = DEFAULT_IMAGES["voter"]
    trainer: str = DEFAULT_IMAGES["trainer"]
    worker: str = DEFAULT_IMAGES["worker"]
    stage_defaults: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Images:
        env = os.environ if env is None else env
        try:
            defaults = json.loads(env.get(STAGE_DEFAULTS_ENV) or "{}")
        except json.JSONDecodeError as err:
            raise ValueError(f"{STAGE_DEFAULTS_ENV} is not valid JSON: {err}") from None
        return cls(
            **{kind: env.get(var) or DEFAULT_IMAGES[kind] for kind, var in IMAGE_ENV.items()},
            stage_defaults=defaults if isinstance(defaults, dict) else {},
        )

    def for_stage(self, stage: str) -> str:
        return getattr(self, STAGE_IMAGE_KIND[stage])

    def resources_for(self, stage: str) -> dict[str, dict[str, str]]:
        resources = (self.stage_defaults.get(stage) or {}).get("resources") or {}
        return {kind: {k: str(v) for k, v in values.items()} for kind, values in resources.items()}


@dataclass(frozen=True)
class RunContext:
    """What the manifests need to know about the run."""

    namespace: str
    name: str
    uid: str
    spec: EvoQualityRunSpec
    images: Images = Images()


def artifact_root(spec: EvoQualityRunSpec, namespace: str, run: str) -> str:
    return f"{spec.storage.uri.rstrip('/')}/{namespace}/{run}"


def owner_reference(ctx: RunContext) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": ctx.name,
        "uid": ctx.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(ctx: RunContext, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ctx.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(ctx)],
    }


def spec_configmap(ctx: RunContext) -> dict[str, Any]:
    """`<run>-spec` with `spec.json`: the validated spec, camelCase, defaults filled in."""
    labels = {
        naming.MANAGED_BY_LABEL: naming.MANAGED_BY,
        naming.RUN_LABEL: naming.label_value(ctx.name),
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(ctx, naming.spec_configmap_name(ctx.name), labels),
        "data": {SPEC_KEY: json.dumps(spec_to_dict(ctx.spec), indent=2, sort_keys=True)},
    }


def _pod_settings(spec: EvoQualityRunSpec, stage: str) -> PodSpec:
    return getattr(spec.pods, stage)


def _resources(
    spec: EvoQualityRunSpec, stage: str, pod: PodSpec, defaults: Images
) -> dict[str, dict[str, str]]:
    """The operator's stage defaults merged per key with the run's own resources (the run wins
    key by key); the scratch volume's size as the ephemeral-storage request; GPUs follow the spec
    unless the run names them."""
    resources = defaults.resources_for(stage)
    for values in resources.values():
        values.pop(GPU, None)  # the spec decides the GPU count
    for kind, values in pod.resources.items():
        resources.setdefault(kind, {}).update(values)
    resources.setdefault("requests", {}).setdefault(EPHEMERAL_STORAGE, pod.scratch_size)
    gpus = 0
    if stage == "train":
        gpus = spec.training.trainer_gpus
    elif stage in ("vote", "eval") and spec.model.engine == "vllm":
        gpus = spec.model.tensor_parallel
    explicit = any(GPU in values for values in resources.values())
    if gpus and not explicit:
        resources.setdefault("limits", {})[GPU] = str(gpus)
        resources.setdefault("requests", {})[GPU] = str(gpus)
    return resources


def resource_warnings(ctx: RunContext) -> list[str]:
    """Stages whose GPU pods would have no cpu or memory request (BestEffort QoS for both: the
    first evicted under node pressure), after merging the chart's stage defaults."""
    found = []
    for stage in ("vote", "train", "eval"):
        resources = _resources(ctx.spec, stage, _pod_settings(ctx.spec, stage), ctx.images)
        if GPU not in resources.get("limits", {}):
            continue
        missing = [r for r in ("cpu", "memory") if r not in resources.get("requests", {})]
        if missing:
            found.append(f"pods.{stage}: a GPU pod without {' or '.join(missing)} requests")
    return found


def _container_security(pod: PodSpec) -> dict[str, Any]:
    """PodSecurity `restricted`, unless the run adds capabilities (InfiniBand's IPC_LOCK)."""
    security = {**CONTAINER_SECURITY, "capabilities": {"drop": ["ALL"]}}
    if pod.add_capabilities:
        security["capabilities"]["add"] = list(pod.add_capabilities)
    return security


def _env(ctx: RunContext, pod: PodSpec, job_name: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "EVOQUALITY_ATTEMPT_ID", "value": job_name},
        {"name": "HF_HOME", "value": MODEL_CACHE},
        {"name": "EVOQUALITY_CACHE", "value": SCRATCH},
        # where the stage writes its summary: the container's terminationMessagePath
        {"name": "EVOQUALITY_TERMINATION_LOG", "value": TERMINATION_LOG},
    ]
    if ctx.spec.storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": ctx.spec.storage.endpoint})
    for var in pod.env:
        if var.secret_name is not None:
            ref = {"name": var.secret_name, "key": var.secret_key or var.name}
            env.append({"name": var.name, "valueFrom": {"secretKeyRef": ref}})
        else:
            env.append({"name": var.name, "value": var.value})
    return env


def _stage_args(ctx: RunContext, key: StageKey) -> list[str]:
    args = [
        "stage",
        key.stage,
        "--run",
        artifact_root(ctx.spec, ctx.namespace, ctx.name),
        "--round",
        naming.round_text(key.round),
        "--spec",
        SPEC_FILE,
    ]
    if key.stage == "vote":
        # the shard index comes from JOB_COMPLETION_INDEX (set on every Indexed Job pod)
        args += ["--num-shards", str(ctx.spec.voting.shards)]
    return args


def _launched(spec: EvoQualityRunSpec, key: StageKey) -> bool:
    """Whether the stage runs under torchrun (training on several GPUs or nodes)."""
    training = spec.training
    return key.stage == "train" and (training.nodes > 1 or training.trainer_gpus > 1)


def _command(ctx: RunContext, key: StageKey) -> tuple[list[str], list[str]]:
    """(command, args) of the stage container.

    Under torchrun the launcher's settings travel as `PET_*` variables (`_launcher_env`) and `--`
    ends its options: torchrun matches prefixes of its own options anywhere before it (`--run`
    would be ambiguous with `--run-path`), so the stage's arguments reach `evoquality` untouched.
    """
    stage = _stage_args(ctx, key)
    if not _launched(ctx.spec, key):
        return ["evoquality"], stage
    return ["torchrun"], ["--no-python", "--", "evoquality", *stage]


def _launcher_env(ctx: RunContext, key: StageKey, job_name: str) -> list[dict[str, Any]]:
    """torchrun's settings as `PET_<OPTION>` variables (torchrun's defaults for its options, as
    Kubeflow Trainer sets them): one node is `--standalone`; several rendezvous on index 0 through
    the headless Service, each pod's node rank being its completion index."""
    if not _launched(ctx.spec, key):
        return []
    training = ctx.spec.training
    env = [
        {"name": "PET_NNODES", "value": str(training.nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(max(training.trainer_gpus, 1))},
    ]
    if training.nodes == 1:
        return [*env, {"name": "PET_STANDALONE", "value": "1"}]
    service = naming.train_service_name(ctx.name, key.round or 0)
    index = f"metadata.annotations['{naming.COMPLETION_INDEX_ANNOTATION}']"
    return [
        *env,
        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": index}}},
        {"name": "PET_MASTER_ADDR", "value": f"{job_name}-0.{service}"},
        {"name": "PET_MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
    ]


def _vllm_rollouts(spec: EvoQualityRunSpec, key: StageKey) -> bool:
    return key.stage == "train" and spec.training.rollouts.engine == "vllm"


def rollout_sidecar(
    ctx: RunContext, key: StageKey, trainer: Mapping[str, Any], pod: PodSpec, job_name: str
) -> dict[str, Any]:
    """The vLLM rollout server of a train pod: a native sidecar (an init container with
    `restartPolicy: Always`, Kubernetes 1.29+) from the voter image. Its startupProbe is the
    readiness gate: the trainer container starts once vLLM has loaded the policy. The kubelet
    restarts it if it dies and stops it when the trainer exits, so it ends with the attempt.
    It has the stage env, secrets and volumes of the trainer (it fetches the round's policy
    itself), not the launcher's or the rollout settings."""
    spec = ctx.spec
    rollouts = spec.training.rollouts
    gpus = rollouts.gpus if spec.training.gpus_per_node else 0
    args = [
        "rollout-server",
        *_stage_args(ctx, key)[2:],  # --run, --round, --spec
        "--gpus",
        str(gpus),
        "--port",
        str(rollout_server.PORT),
    ]
    sidecar: dict[str, Any] = {
        "name": ROLLOUT_CONTAINER,
        "image": spec.pods.vote.image or ctx.images.voter,
        "restartPolicy": "Always",
        "command": ["evoquality"],
        "args": args,
        "env": _env(ctx, pod, job_name),
        "ports": [{"name": "rollouts", "containerPort": rollout_server.PORT}],
        "startupProbe": {
            "httpGet": {"path": "/health", "port": rollout_server.PORT},
            "periodSeconds": ROLLOUT_PROBE_PERIOD_S,
            "failureThreshold": -(-rollouts.startup_timeout_seconds // ROLLOUT_PROBE_PERIOD_S),
        },
        "volumeMounts": list(trainer["volumeMounts"]),
        "securityContext": _container_security(pod),
    }
    if "envFrom" in trainer:
        sidecar["envFrom"] = trainer["envFrom"]
    if gpus:
        sidecar["resources"] = {"limits": {GPU: str(gpus)}, "requests": {GPU: str(gpus)}}
    return sidecar


def vote_failure_policy(shards: int) -> dict[str, Any]:
    """Vote shards fail per index: a failed shard is retried alone (`VOTE_RETRIES_PER_INDEX`)
    while the others run on; exit codes in `NO_RETRY_EXIT_CODES` fail their index at once; once
    more than half the indexes failed the Job stops. Shards that finished are committed, so the
    operator's next attempt of the stage runs only the failed ones again."""
    return {
        "backoffLimitPerIndex": VOTE_RETRIES_PER_INDEX,
        "maxFailedIndexes": shards // 2,
        "podFailurePolicy": {
            "rules": [
                *DISRUPTION_RULES,
                {
                    "action": "FailIndex",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": list(NO_RETRY_EXIT_CODES),
                    },
                },
            ]
        },
    }


def stage_job(ctx: RunContext, key: StageKey, attempt: int, suspend: bool) -> dict[str, Any]:
    """The Job of one attempt of one stage."""
    spec = ctx.spec
    pod = _pod_settings(spec, key.stage)
    name = naming.job_name(ctx.name, key.round, key.stage, attempt)
    labels = naming.stage_labels(ctx.name, key.round, key.stage, attempt)
    if spec.queue_name:
        labels[naming.KUEUE_QUEUE_LABEL] = spec.queue_name
        if spec.priority_class:
            labels[naming.KUEUE_PRIORITY_LABEL] = spec.priority_class
    command, args = _command(ctx, key)
    env = _env(ctx, pod, name) + _launcher_env(ctx, key, name)
    multi_node = key.stage == "train" and spec.training.nodes > 1
    # secrets loaded whole are optional (e.g. hf-token: public models need none)
    env_from = [{"secretRef": {"name": s, "optional": True}} for s in pod.env_from_secrets]
    if spec.storage.secret_name:
        env_from.insert(0, {"secretRef": {"name": spec.storage.secret_name}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": pod.image or ctx.images.for_stage(key.stage),
        "command": command,
        "args": args,
        "env": env,
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "model-cache", "mountPath": MODEL_CACHE},
            {"name": "scratch", "mountPath": SCRATCH},
            *pod.extra_volume_mounts,
        ],
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _container_security(pod),
    }
    if env_from:
        container["envFrom"] = env_from
    rollouts = _vllm_rollouts(spec, key)
    if rollouts:
        container["env"] += [
            {"name": rollout_server.SERVER_ENV, "value": rollout_server.url()},
            {"name": rollout_server.SYNC_DIR_ENV, "value": ROLLOUT_SYNC_DIR},
        ]
        container["volumeMounts"].append({"name": "rollout-weights", "mountPath": ROLLOUT_SYNC_DIR})
    resources = _resources(spec, key.stage, pod, ctx.images)
    if resources:
        container["resources"] = resources
    if multi_node:
        container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    cache: dict[str, Any] = (
        {"persistentVolumeClaim": {"claimName": spec.pods.model_cache_pvc}}
        if spec.pods.model_cache_pvc
        else {"emptyDir": {}}
    )
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [container],
        "volumes": [
            {"name": "spec", "configMap": {"name": naming.spec_configmap_name(ctx.name)}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": pod.shm_size}},
            {"name": "model-cache", **cache},
            {"name": "scratch", "emptyDir": {"sizeLimit": pod.scratch_size}},
            *pod.extra_volumes,
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": STAGE_UID,
            "runAsGroup": STAGE_UID,
            "fsGroup": STAGE_UID,  # the non-root user can write a root-owned PVC
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": pod.service_account_name is not None,
    }
    if rollouts:
        pod_spec["initContainers"] = [rollout_sidecar(ctx, key, container, pod, name)]
        pod_spec["volumes"].append({"name": "rollout-weights", "emptyDir": {}})
    if pod.runtime_class_name:
        pod_spec["runtimeClassName"] = pod.runtime_class_name
    if pod.scheduler_name:
        pod_spec["schedulerName"] = pod.scheduler_name
    if pod.node_selector:
        pod_spec["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in pod.tolerations]
    if pod.affinity:
        pod_spec["affinity"] = dict(pod.affinity)
    if pod.priority_class_name:
        pod_spec["priorityClassName"] = pod.priority_class_name
    if pod.service_account_name:
        pod_spec["serviceAccountName"] = pod.service_account_name
    if pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in pod.image_pull_secrets]
    if multi_node:
        pod_spec["subdomain"] = naming.train_service_name(ctx.name, key.round or 0)
    job_spec: dict[str, Any] = {
        # retries are the operator's attempts (counted, with backoff); vote shards: per index
        **({} if key.stage == "vote" else {"backoffLimit": 0}),
        "suspend": suspend,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {
            "rules": list(GANG_DISRUPTION_RULES if multi_node else DISRUPTION_RULES)
        },
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
    }
    if key.stage == "vote":
        shards = spec.voting.shards
        job_spec.update(
            completionMode="Indexed",
            completions=shards,
            parallelism=min(spec.voting.parallelism or shards, shards),
            **vote_failure_policy(shards),
        )
    elif multi_node:
        job_spec.update(
            completionMode="Indexed",
            completions=spec.training.nodes,
            parallelism=spec.training.nodes,
        )
    if pod.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = pod.active_deadline_seconds
    if spec.pods.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.pods.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(ctx, name, labels),
        "spec": job_spec,
    }


def train_service(ctx: RunContext, round_index: int) -> dict[str, Any]:
    """Headless Service giving the pods of a multi-node training Job stable DNS names."""
    selector = {
        naming.RUN_LABEL: naming.label_value(ctx.name),
        naming.ROUND_LABEL: str(round_index),
        naming.STAGE_LABEL: "train",
    }
    labels = {naming.MANAGED_BY_LABEL: naming.MANAGED_BY, **selector}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ctx, naming.train_service_name(ctx.name, round_index), labels),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT}],
        },
    }


def stage_objects(ctx: RunContext, key: StageKey, attempt: int, suspend: bool) -> list[dict]:
    """Everything one attempt needs, in creation order (Service before its Job's pods)."""
    objects: list[dict[str, Any]] = []
    if key.stage == "train" and ctx.spec.training.nodes > 1 and key.round is not None:
        objects.append(train_service(ctx, key.round))
    objects.append(stage_job(ctx, key, attempt, suspend))
    return objects


# ---------------------------------------------------------------------------------------------
# reading Jobs and pods
# ---------------------------------------------------------------------------------------------


def parse_summary(message: str | None) -> dict[str, Any] | None:
    """The stage summary in a termination message: the last line that is a JSON summary."""
    if not message:
        return None
    for line in reversed(message.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "stage" in value and isinstance(value.get("metrics"), dict):
            return value
    return None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        state = (status.get("state") or {}).get("terminated")
        if state:
            return state
        last = (status.get("lastState") or {}).get("terminated")
        if last:
            return last
    return {}


def _condition_true(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def job_state(job: Mapping[str, Any]) -> str:
    if _condition_true(job, "Complete"):
        return SUCCEEDED
    if _condition_true(job, "Failed"):
        return FAILED
    return RUNNING if (job.get("status") or {}).get("active") else PENDING


def job_key(job: Mapping[str, Any]) -> tuple[StageKey, int] | None:
    labels = (job.get("metadata") or {}).get("labels") or {}
    stage = labels.get(naming.STAGE_LABEL)
    round_text = labels.get(naming.ROUND_LABEL)
    try:
        attempt = int(labels.get(naming.ATTEMPT_LABEL, "0"))
        round_index = None if round_text == "base" else int(round_text or "")
    except ValueError:
        return None
    if stage not in ("vote", "rank", "train", "eval"):
        return None
    return StageKey(round_index, stage), attempt


def _finish_time(pod: Mapping[str, Any]) -> str:
    return _terminated(pod).get("finishedAt") or ""


def summaries_from_pods(pods: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Summaries of the succeeded pods, one per completion index (the latest pod of an index)."""
    by_index: dict[str, tuple[str, dict[str, Any]]] = {}
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Succeeded":
            continue
        summary = parse_summary(_terminated(pod).get("message"))
        if summary is None:
            continue
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        index = annotations.get(naming.COMPLETION_INDEX_ANNOTATION, "0")
        finished = _finish_time(pod)
        if index not in by_index or finished >= by_index[index][0]:
            by_index[index] = (finished, summary)
    return tuple(
        by_index[i][1] for i in sorted(by_index, key=lambda i: int(i) if i.isdigit() else 0)
    )


def failure_message(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> str:
    """The last failed pod's termination message (or reason), else the Job's Failed condition."""
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"]
    failed.sort(key=_finish_time)
    for pod in reversed(failed):
        state = _terminated(pod)
        text = (state.get("message") or "").strip()
        if text:
            lines = text.splitlines()
            return "\n".join(lines[-5:])[-1024:]
        reason = state.get("reason") or (pod.get("status") or {}).get("reason")
        if reason:
            code = state.get("exitCode")
            return f"{reason} (exit code {code})" if code is not None else str(reason)
    condition = _condition_true(job, "Failed") or {}
    parts = [condition.get("reason"), condition.get("message")]
    return ": ".join(p for p in parts if p) or "the Job failed"


def waiting_signal(
    pods: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]] = ()
) -> tuple[str, str] | None:
    """(reason, text) of why an unfinished Job's pods wait, each read from where Kubernetes puts
    it: a container's waiting state (kubelet: ImagePullBackOff, CreateContainerConfigError, ...),
    the pod's `PodScheduled=False` condition (scheduler: Unschedulable), else the newest
    `FailedCreate` Event of the Job (Job controller: no pod at all, e.g. a quota)."""
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        statuses = (status.get("initContainerStatuses") or []) + (
            status.get("containerStatuses") or []
        )
        for container in statuses:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason and reason not in NORMAL_WAITING:
                return reason, f"pod {name}: {reason}: {waiting.get('message', '')}".rstrip(": ")
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                reason = condition.get("reason") or "Unschedulable"
                text = f"pod {name}: {reason}: {condition.get('message', '')}"
                return reason, text.rstrip(": ")
    failed = [e for e in events if e.get("reason") == "FailedCreate"]
    if failed:
        newest = max(failed, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        job = (newest.get("involvedObject") or {}).get("name", "?")
        return "FailedCreate", f"Job {job}: FailedCreate: {newest.get('message', '')}"
    return None


def _disrupted(job: Mapping[str, Any]) -> bool:
    """Failed by a FailJob rule on DisruptionTarget (the Job controller names the condition)."""
    condition = _condition_true(job, "Failed") or {}
    return condition.get("reason") == "PodFailurePolicy" and "DisruptionTarget" in str(
        condition.get("message", "")
    )


def _expected_ready(job: Mapping[str, Any], key: StageKey) -> int:
    """Ready pods that show the attempt runs: every pod of a multi-node gang, else one."""
    spec = job.get("spec") or {}
    if key.stage == "train" and spec.get("completionMode") == "Indexed":
        return int(spec.get("parallelism") or 1)
    return 1


def observe_job(
    job: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]] = (),
    events: Sequence[Mapping[str, Any]] = (),
) -> ObservedJob | None:
    """An ObservedJob for one child Job: its pods give summaries and failure messages once it
    finished, and why it waits while it runs (with its Events)."""
    parsed = job_key(job)
    if parsed is None:
        return None
    key, attempt = parsed
    status = job.get("status") or {}
    state = job_state(job)
    waiting = waiting_signal(pods, events) if state not in (SUCCEEDED, FAILED) else None
    return ObservedJob(
        name=job["metadata"]["name"],
        key=key,
        attempt=attempt,
        state=state,
        suspended=bool((job.get("spec") or {}).get("suspend")),
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
        summaries=tuple(s for s in summaries_from_pods(pods) if s.get("stage") == key.stage)
        if state == SUCCEEDED
        else (),
        message=failure_message(job, pods) if state == FAILED else "",
        ready=int(status.get("ready") or 0) + int(status.get("succeeded") or 0),
        expected=_expected_ready(job, key),
        deleting=bool((job.get("metadata") or {}).get("deletionTimestamp")),
        disrupted=state == FAILED and _disrupted(job),
        waiting_reason=waiting[0] if waiting else "",
        waiting=waiting[1] if waiting else "",
    )
