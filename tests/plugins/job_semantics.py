"""The Kubernetes rules the test Job executor follows, as pure functions (no processes, no HTTP).

- `expand`: `$(VAR)` references in env values, command and args (`$$(VAR)` escapes one).
- `container_env`: a container's environment as the kubelet builds it (envFrom, then env in
  order; values expanded with what is defined before them; fieldRef and secret/ConfigMap keys).
- `failure_action`: the first matching `podFailurePolicy` rule for a failed pod.
- `JobTracker`: the Job controller's bookkeeping of one Job: which indexes start next
  (`parallelism`, Indexed or not), pod failures counted against `backoffLimit` or
  `backoffLimitPerIndex`, `maxFailedIndexes`, and the Job's status and conditions.

The semantics are those of Kubernetes 1.33 (podFailurePolicy, backoffLimitPerIndex GA).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
DEFAULT_BACKOFF_LIMIT = 6
# backoffLimit when only backoffLimitPerIndex is set (the API server's default)
UNLIMITED = 2**31 - 1
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD = re.compile(r"metadata\.(annotations|labels)\['([^']+)'\]")

# lookup(kind, name) -> the object's data as text (Secret values decoded), None when missing
Lookup = Callable[[str, str], Mapping[str, str] | None]


class ConfigError(RuntimeError):
    """The container cannot be configured (CreateContainerConfigError): a missing reference."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes variable expansion: `$(VAR)` from `env`, unknown references kept as they are,
    `$$` an escaped `$`."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


def field_value(path: str, pod: Mapping[str, Any]) -> str:
    """A downward-API `fieldRef` of a pod (the fields the executor's pods have)."""
    meta = pod.get("metadata") or {}
    match = _FIELD.fullmatch(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName"),
        "status.podIP": (pod.get("status") or {}).get("podIP"),
        "status.hostIP": (pod.get("status") or {}).get("hostIP"),
    }
    if path not in simple:
        raise ConfigError(f"fieldRef {path!r} is not supported")
    return str(simple[path] or "")


def _referenced(lookup: Lookup, kind: str, ref: Mapping[str, Any]) -> Mapping[str, str] | None:
    data = lookup(kind, ref["name"])
    if data is None and not ref.get("optional"):
        raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
    return data


def _value_from(source: Mapping[str, Any], pod: Mapping[str, Any], lookup: Lookup) -> str | None:
    if "fieldRef" in source:
        return field_value(source["fieldRef"]["fieldPath"], pod)
    for kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
        if key in source:
            ref = source[key]
            data = _referenced(lookup, kind, ref)
            if data is None:
                return None
            if ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise ConfigError(f"couldn't find key {ref['key']} in {kind} {ref['name']}")
            return data[ref["key"]]
    raise ConfigError(f"valueFrom {sorted(source)} is not supported")


def container_env(
    container: Mapping[str, Any], pod: Mapping[str, Any], lookup: Lookup
) -> dict[str, str]:
    """The variables the container's env and envFrom define, in the kubelet's order."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            if key in source:
                data = _referenced(lookup, kind, source[key]) or {}
                prefix = source.get("prefix", "")
                env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        if "valueFrom" in var:
            value = _value_from(var["valueFrom"], pod, lookup)
            if value is None:
                continue
            env[var["name"]] = value
        else:
            env[var["name"]] = expand(var.get("value", ""), env)
    return env


# ---------------------------------------------------------------------------------------------
# podFailurePolicy
# ---------------------------------------------------------------------------------------------

COUNT, IGNORE, FAIL_JOB, FAIL_INDEX = "Count", "Ignore", "FailJob", "FailIndex"


@dataclass(frozen=True)
class PodExit:
    """How a pod ended: its container's exit code and the pod's true conditions."""

    exit_code: int
    container: str = ""
    conditions: frozenset[str] = frozenset()
    pod: str = ""  # namespace/name, for the Job's condition message


def _rule_matches(rule: Mapping[str, Any], pod: PodExit) -> bool:
    codes = rule.get("onExitCodes")
    if codes is not None:
        if codes.get("containerName") and codes["containerName"] != pod.container:
            return False
        inside = pod.exit_code in set(codes.get("values") or ())
        return inside if codes.get("operator", "In") == "In" else not inside and pod.exit_code != 0
    return any(
        c.get("type") in pod.conditions and c.get("status", "True") == "True"
        for c in rule.get("onPodConditions") or ()
    )


def matching_rule(policy: Mapping[str, Any] | None, pod: PodExit) -> int | None:
    """The index of the first `podFailurePolicy` rule that matches the failed pod."""
    for index, rule in enumerate((policy or {}).get("rules") or ()):
        if _rule_matches(rule, pod):
            return index
    return None


def failure_action(policy: Mapping[str, Any] | None, pod: PodExit) -> str:
    """The action of the first matching rule; `Count` when none matches or there is no policy."""
    index = matching_rule(policy, pod)
    return COUNT if index is None else policy["rules"][index]["action"]  # type: ignore[index]


# ---------------------------------------------------------------------------------------------
# the Job controller's bookkeeping
# ---------------------------------------------------------------------------------------------


def compress_indexes(indexes: Iterable[int]) -> str:
    """Kubernetes' interval notation of completed/failed indexes: `0-2,5`."""
    runs: list[list[int]] = []
    for i in sorted(set(indexes)):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


@dataclass
class JobTracker:
    """One Job's progress as the Job controller keeps it."""

    completions: int
    parallelism: int
    indexed: bool
    backoff_limit: int
    per_index_limit: int | None
    max_failed_indexes: int | None
    policy: Mapping[str, Any] | None
    active: set[int] = field(default_factory=set)
    succeeded: set[int] = field(default_factory=set)
    failed_indexes: set[int] = field(default_factory=set)
    failures: dict[int, int] = field(default_factory=dict)  # counted failures per index
    failed_pods: int = 0  # every failed pod (status.failed), counted or ignored
    verdict: tuple[str, str, str] | None = None  # (Complete|Failed, reason, message)

    @classmethod
    def from_job(cls, job: Mapping[str, Any]) -> JobTracker:
        spec = job.get("spec") or {}
        indexed = spec.get("completionMode") == "Indexed"
        parallelism = int(spec.get("parallelism", 1))
        completions = int(spec.get("completions") or (parallelism if indexed else 1))
        per_index = spec.get("backoffLimitPerIndex")
        default_limit = UNLIMITED if per_index is not None else DEFAULT_BACKOFF_LIMIT
        return cls(
            completions=completions,
            parallelism=parallelism,
            indexed=indexed,
            backoff_limit=int(spec.get("backoffLimit", default_limit)),
            per_index_limit=None if per_index is None else int(per_index),
            max_failed_indexes=spec.get("maxFailedIndexes"),
            policy=spec.get("podFailurePolicy"),
        )

    @property
    def finished(self) -> bool:
        return self.verdict is not None

    def to_start(self) -> list[int]:
        """Indexes to start a pod for now (lowest first, within `parallelism`)."""
        if self.finished:
            return []
        room = self.parallelism - len(self.active)
        waiting = [
            i
            for i in range(self.completions)
            if i not in self.active and i not in self.succeeded and i not in self.failed_indexes
        ]
        if not self.indexed:  # NonIndexed (one completion): pods until one succeeded
            waiting = waiting[:1] if not self.succeeded else []
        return waiting[: max(room, 0)]

    def started(self, index: int) -> None:
        self.active.add(index)

    def pod_succeeded(self, index: int) -> None:
        self.active.discard(index)
        self.succeeded.add(index)
        self._settle()

    def pod_failed(self, index: int, pod: PodExit) -> str:
        """Record a failed pod; returns the podFailurePolicy action applied."""
        self.active.discard(index)
        self.failed_pods += 1
        action = failure_action(self.policy, pod)
        if action == IGNORE:
            return action
        if action == FAIL_JOB:  # the Job controller's wording (pkg/controller/job)
            rule = matching_rule(self.policy, pod)
            why = (
                f"Pod {pod.pod} has condition DisruptionTarget"
                if "DisruptionTarget" in pod.conditions
                and not (self.policy or {})["rules"][rule].get("onExitCodes")
                else f"Container {pod.container} for pod {pod.pod} failed with exit code "
                f"{pod.exit_code}"
            )
            self._fail("PodFailurePolicy", f"{why} matching FailJob rule at index {rule}")
            return action
        if self.per_index_limit is not None:
            self.failures[index] = self.failures.get(index, 0) + 1
            if action == FAIL_INDEX or self.failures[index] > self.per_index_limit:
                self.failed_indexes.add(index)
            limit = self.max_failed_indexes
            if limit is not None and len(self.failed_indexes) > int(limit):
                self._fail("MaxFailedIndexesExceeded", "Job has exceeded maxFailedIndexes")
            else:
                self._settle()
        else:
            self.failures[index] = self.failures.get(index, 0) + 1
        if not self.finished and sum(self.failures.values()) > self.backoff_limit:
            self._fail("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        return action

    def deadline_exceeded(self) -> None:
        self._fail("DeadlineExceeded", "Job was active longer than specified deadline")

    def _settle(self) -> None:
        """Every index succeeded or failed: the Job is complete, or failed with FailedIndexes."""
        if self.finished or self.active:
            return
        if self.indexed and len(self.succeeded | self.failed_indexes) < self.completions:
            return
        if self.failed_indexes:
            self._fail("FailedIndexes", "Job has failed indexes")
        elif self.succeeded:
            self.verdict = ("Complete", "CompletionsReached", "Reached the expected completions")

    def _fail(self, reason: str, message: str) -> None:
        if self.verdict is None:
            self.verdict = ("Failed", reason, message)

    def status(self) -> dict[str, Any]:
        """`status` fields the Job controller maintains (times and conditions are the caller's)."""
        status: dict[str, Any] = {
            "active": len(self.active),
            "succeeded": len(self.succeeded),
            "failed": self.failed_pods,
        }
        if self.indexed:
            status["completedIndexes"] = compress_indexes(self.succeeded)
            if self.per_index_limit is not None:
                status["failedIndexes"] = compress_indexes(self.failed_indexes)
        return status
