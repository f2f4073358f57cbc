"""Every stage pod the operator renders passes PodSecurity `restricted` and the Kubernetes
schemas of 1.29-1.33; the offline checker (tests/plugins/pod_security.py) rejects a bad pod for
each rule."""

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from evoquality_operator import jobs
from evoquality_operator.reconcile import StageKey

from evoquality.spec import parse_spec
from tests.plugins.pod_security import violations

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33")
BASE = {"data": {"manifest": "s3://b/pool.csv"}, "storage": {"uri": "s3://b/runs"}}
SPECS = {
    "defaults": BASE,
    "7b example": yaml.safe_load((ROOT / "examples" / "qwen2.5-vl-7b.yaml").read_text())["spec"],
    "2 nodes": {**BASE, "training": {"nodes": 2, "gpusPerNode": 8}},
    "kueue": {**BASE, "queueName": "gpu-queue", "pods": {"train": {"serviceAccountName": "sa"}}},
    "vllm rollouts": {**BASE, "training": {"rollouts": {"engine": "vllm"}}},
}
STAGES = [StageKey(None, "eval"), StageKey(0, "vote"), StageKey(0, "rank"), StageKey(0, "train"),
          StageKey(0, "eval")]  # fmt: skip


def rendered(spec: dict) -> list[dict]:
    context = jobs.RunContext("ml", "demo", "uid-1", parse_spec(spec), jobs.Images("v", "t", "w"))
    return [jobs.stage_job(context, key, 0, suspend=False) for key in STAGES]


@pytest.mark.parametrize("name", list(SPECS))
def test_every_stage_pod_is_restricted_and_schema_valid(name):
    for job in rendered(SPECS[name]):
        pod = job["spec"]["template"]["spec"]
        assert violations(pod) == [], (job["metadata"]["name"], violations(pod))
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(job, version, strict=True)


def test_service_account_token_is_mounted_only_with_a_service_account():
    jobs_ = {j["metadata"]["name"]: j["spec"]["template"]["spec"] for j in rendered(SPECS["kueue"])}
    assert jobs_["demo-r0-train"]["automountServiceAccountToken"] is True
    assert jobs_["demo-r0-rank"]["automountServiceAccountToken"] is False


def test_infiniband_capabilities_leave_the_restricted_profile():
    spec = {**BASE, "pods": {"train": {"addCapabilities": ["IPC_LOCK"]}}}
    train = rendered(spec)[3]["spec"]["template"]["spec"]
    # IPC_LOCK is outside even the baseline profile: "restricted or InfiniBand" (docs/deploy.md)
    assert violations(train) == ["capabilities (baseline)", "capabilities (restricted)"]


GOOD = rendered(BASE)[2]["spec"]["template"]["spec"]  # the rank pod


def _break(path: str, value) -> dict:
    pod = copy.deepcopy(GOOD)
    node = pod
    *parts, last = path.split(".")
    for part in parts:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[last] = value
    return pod


@pytest.mark.parametrize(
    ("path", "value", "rule"),
    [
        ("securityContext.windowsOptions", {"hostProcess": True}, "hostProcess"),
        ("hostNetwork", True, "host namespaces"),
        ("hostPID", True, "host namespaces"),
        ("containers.0.securityContext.privileged", True, "privileged containers"),
        ("containers.0.securityContext.capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]},
         "capabilities (baseline)"),
        ("volumes", [{"name": "h", "hostPath": {"path": "/"}}], "hostPath volumes"),
        ("containers.0.ports", [{"containerPort": 80, "hostPort": 80}], "host ports"),
        ("securityContext.appArmorProfile", {"type": "Unconfined"}, "AppArmor"),
        ("securityContext.seLinuxOptions", {"type": "spc_t"}, "SELinux"),
        ("containers.0.securityContext.procMount", "Unmasked", "/proc mount type"),
        ("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], "sysctls"),
        ("volumes", [{"name": "n", "nfs": {"server": "s", "path": "/"}}], "volume types"),
        ("containers.0.securityContext.allowPrivilegeEscalation", True, "privilege escalation"),
        ("containers.0.securityContext.runAsNonRoot", False, "running as non-root"),
        ("containers.0.securityContext.runAsUser", 0, "running as non-root user"),
        ("securityContext.seccompProfile", {"type": "Unconfined"}, "seccomp"),
        ("containers.0.securityContext.capabilities", {"drop": []}, "capabilities (restricted)"),
    ],
)  # fmt: skip
def test_the_checker_rejects_a_pod_for_each_rule(path, value, rule):
    assert violations(GOOD) == []
    assert rule in violations(_break(path, value))
