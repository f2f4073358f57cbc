"""Deterministic, DNS-1123-safe names and labels of a run's child objects.

A child's name is a pure function of the run's name, the round, the stage and the attempt, so a
restarted operator finds (adopts) what it created before instead of creating it twice.
"""

from __future__ import annotations

import hashlib
import re

GROUP = "evoquality.io"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "evoquality-operator"
RUN_LABEL = f"{GROUP}/run"
ROUND_LABEL = f"{GROUP}/round"
STAGE_LABEL = f"{GROUP}/stage"
ATTEMPT_LABEL = f"{GROUP}/attempt"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
JOB_NAME_LABEL = "job-name"  # set by the Job controller on its pods
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

MAX_NAME = 63
# Pods of Indexed Jobs get the hostname `<job>-<index>`, itself a DNS-1123 label (<= 63): keep
# room for the index suffix.
MAX_JOB_NAME = 56
_HASH_LEN = 8
_INVALID = re.compile(r"[^a-z0-9-]+")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LEN]


def dns_label(raw: str, max_len: int = MAX_NAME) -> str:
    """`raw` as a DNS-1123 label of at most `max_len` characters.

    Unchanged when already valid and short enough; otherwise invalid characters become `-` and a
    hash of the original text is appended, so two different inputs never share a result
    (`qwen2.5-vl` and `qwen2-5-vl` differ).
    """
    if len(raw) <= max_len and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", raw):
        return raw
    cleaned = _INVALID.sub("-", raw.lower()).strip("-")
    head = cleaned[: max_len - _HASH_LEN - 1].rstrip("-")
    return f"{head}-{_digest(raw)}" if head else _digest(raw)


def round_text(round_index: int | None) -> str:
    """`base` for the base model's evaluation, else the round number."""
    return "base" if round_index is None else str(round_index)


def stage_id(round_index: int | None, stage: str) -> str:
    """Key of a stage in `status.stages`: `r0-vote`, `base-eval`."""
    return f"base-{stage}" if round_index is None else f"r{round_index}-{stage}"


def job_name(run: str, round_index: int | None, stage: str, attempt: int = 0) -> str:
    """`<run>-r<round>-<stage>[-a<attempt>]`, `<run>-base-eval` for the base evaluation."""
    name = f"{run}-{stage_id(round_index, stage)}"
    if attempt:
        name += f"-a{attempt}"
    return dns_label(name, MAX_JOB_NAME)


def train_service_name(run: str, round_index: int) -> str:
    """Headless Service of a round's multi-node training (shared by its attempts)."""
    return dns_label(f"{run}-r{round_index}-train-svc")


def spec_configmap_name(run: str) -> str:
    return dns_label(f"{run}-spec")


def label_value(value: str) -> str:
    """A label value (<= 63 characters, restricted alphabet), hashed when `value` does not fit."""
    if len(value) <= MAX_NAME and _LABEL_VALUE.match(value):
        return value
    return dns_label(value)


def run_selector(run: str) -> str:
    """Label selector of all child Jobs of a run."""
    return f"{RUN_LABEL}={label_value(run)},{MANAGED_BY_LABEL}={MANAGED_BY}"


def stage_labels(run: str, round_index: int | None, stage: str, attempt: int) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        RUN_LABEL: label_value(run),
        ROUND_LABEL: round_text(round_index),
        STAGE_LABEL: stage,
        ATTEMPT_LABEL: str(attempt),
    }
