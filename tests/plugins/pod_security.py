"""An offline checker of the PodSecurity `restricted` profile (Kubernetes 1.29-1.33), which PyPI
does not ship: `violations(pod_spec)` lists every rule a pod spec breaks, by the rule names of
https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline + restricted).

Each rule is shown to reject a bad pod in tests/unit/test_pod_security.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# baseline: capabilities a container may add; restricted: only NET_BIND_SERVICE
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
SECCOMP_OK = {"RuntimeDefault", "Localhost"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _containers(pod: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(kind) or []


def _effective(pod: Mapping[str, Any], container: Mapping[str, Any], key: str) -> Any:
    own = (container.get("securityContext") or {}).get(key)
    return own if own is not None else (pod.get("securityContext") or {}).get(key)


def violations(pod: Mapping[str, Any]) -> list[str]:
    """The restricted-profile rules ``pod`` (a PodSpec as a dict) breaks; empty = compliant."""
    found: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    containers = list(_containers(pod))
    contexts = [c.get("securityContext") or {} for c in containers]
    # --- baseline
    if pod_sc.get("windowsOptions", {}).get("hostProcess") or any(
        sc.get("windowsOptions", {}).get("hostProcess") for sc in contexts
    ):
        found.append("hostProcess")
    if any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")):
        found.append("host namespaces")
    if any(sc.get("privileged") for sc in contexts):
        found.append("privileged containers")
    for sc in contexts:
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            found.append("capabilities (baseline)")
            break
    if any("hostPath" in v for v in pod.get("volumes") or []):
        found.append("hostPath volumes")
    if any(p.get("hostPort") for c in containers for p in c.get("ports") or []):
        found.append("host ports")
    for sc in [pod_sc, *contexts]:
        apparmor = (sc.get("appArmorProfile") or {}).get("type")
        if apparmor not in (None, "RuntimeDefault", "Localhost"):
            found.append("AppArmor")
            break
    for sc in [pod_sc, *contexts]:
        selinux = sc.get("seLinuxOptions") or {}
        if (
            selinux.get("type", "") not in SELINUX_TYPES
            or selinux.get("user")
            or selinux.get("role")
        ):
            found.append("SELinux")
            break
    if any(sc.get("procMount") not in (None, "Default") for sc in contexts):
        found.append("/proc mount type")
    if any(s.get("name") not in SAFE_SYSCTLS for s in pod_sc.get("sysctls") or []):
        found.append("sysctls")
    # --- restricted
    for volume in pod.get("volumes") or []:
        if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
            found.append("volume types")
            break
    if any(sc.get("allowPrivilegeEscalation") is not False for sc in contexts):
        found.append("privilege escalation")
    if any(_effective(pod, c, "runAsNonRoot") is not True for c in containers):
        found.append("running as non-root")
    if pod_sc.get("runAsUser") == 0 or any(sc.get("runAsUser") == 0 for sc in contexts):
        found.append("running as non-root user")
    for c in containers:
        seccomp = (_effective(pod, c, "seccompProfile") or {}).get("type")
        if seccomp not in SECCOMP_OK or any(
            (sc.get("seccompProfile") or {}).get("type") == "Unconfined" for sc in [pod_sc]
        ):
            found.append("seccomp")
            break
    for sc in contexts:
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or set(caps.get("add") or []) - {
            "NET_BIND_SERVICE"
        }:
            found.append("capabilities (restricted)")
            break
    return found
