"""Applies the pure reconcile to the cluster: read run and Jobs, reconcile, act, write status.

One `Operator` per operator process. Reconciles of one run are serialised and coalesced: any number
of pokes (run events, Job events, timers, retry timers) that arrive while a pass runs are served
by one more pass. API calls run in worker threads; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from evoquality.spec import API_GROUP, API_VERSION, KIND, EvoQualityRunSpec, SpecError, parse_spec
from evoquality.telemetry import RunMetrics

from . import jobs as jobs_module
from . import naming
from .k8s import Api, merge_patch
from .reconcile import (
    ACTIVE_STATES,
    BACKING_OFF,
    FAILED,
    SUCCEEDED,
    CreateJob,
    DeleteJob,
    EnsureSpecConfigMap,
    ObservedJob,
    Outcome,
    RequeueAfter,
    RunRef,
    SetJobSuspended,
    StageDisrupted,
    StageFailed,
    StageKey,
    StageRetried,
    StageStarted,
    StageSucceeded,
    StageWaiting,
    iso,
    parse_time,
    reconcile,
    refuse_create,
    set_condition,
)

log = logging.getLogger("evoquality_operator")
RETRY_ON_ERROR_S = 5.0


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    metrics_port: int = 8080
    metrics_addr: str = "0.0.0.0"
    images: jobs_module.Images = jobs_module.Images()
    resync_seconds: float = 60.0
    check_crd: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        namespaces = tuple(n for n in env.get("EVOQUALITY_NAMESPACES", "").split(",") if n)
        return cls(
            namespaces=namespaces,
            all_namespaces=not namespaces,
            metrics_port=int(env.get("EVOQUALITY_METRICS_PORT", "8080")),
            metrics_addr=env.get("EVOQUALITY_METRICS_ADDR", "0.0.0.0"),
            images=jobs_module.Images.from_env(env),
            resync_seconds=float(env.get("EVOQUALITY_RESYNC_SECONDS", "60")),
            check_crd=env.get("EVOQUALITY_CHECK_CRD", "true").lower() not in ("0", "false", "no"),
        )


@dataclass
class _RunState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    requested: int = 0
    served: int = 0
    wake: asyncio.TimerHandle | None = None
    observed: set[str] = field(default_factory=set)  # stage ids whose summary was exported
    started: set[tuple[str, int]] = field(default_factory=set)
    configmap: bool = False
    forgotten: bool = False  # the run is gone: a pass still in flight exports nothing


@dataclass
class PassResult:
    outcome: Outcome | None = None
    requeue_after: float | None = None
    error: str | None = None


class Operator:
    def __init__(self, config: OperatorConfig, api: Api, metrics: RunMetrics) -> None:
        self.config = config
        self.api = api
        self.metrics = metrics
        self._runs: dict[tuple[str, str], _RunState] = {}
        # forgetting a run (event loop) and exporting its metrics (a pass's worker thread) are
        # exclusive: a pass in flight when its run is deleted must not bring the series back
        self._metrics_lock = threading.Lock()
        self.passes = 0  # reconcile passes run (benchmark / tests)

    # --- scheduling --------------------------------------------------------------------------

    def _state(self, namespace: str, name: str) -> _RunState:
        return self._runs.setdefault((namespace, name), _RunState())

    def run_of_label(self, namespace: str, label: str) -> str | None:
        """The run a pod's run label names (label values of long names are digests)."""
        for run_namespace, run in self._runs:
            if run_namespace == namespace and naming.label_value(run) == label:
                return run
        return None

    async def reconcile(self, namespace: str, name: str) -> None:
        """Reconcile the run now, coalescing with concurrent requests for the same run."""
        state = self._state(namespace, name)
        state.requested += 1
        ticket = state.requested
        async with state.lock:
            if state.served >= ticket:
                return  # a pass that started after this request already covered it
            state.served = state.requested
            result = await asyncio.to_thread(self._pass, namespace, name, state)
            self.passes += 1
        if result.error is not None:
            self._schedule(namespace, name, RETRY_ON_ERROR_S)
        elif result.requeue_after is not None:
            self._schedule(namespace, name, result.requeue_after)

    def _schedule(self, namespace: str, name: str, delay: float) -> None:
        state = self._runs.get((namespace, name))
        if state is None:
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + max(delay, 0.0)
        wake = state.wake
        pending = wake is not None and not wake.cancelled() and wake.when() > loop.time()
        if pending and wake.when() <= when:
            return  # an earlier wake-up is still to come (a fired one no longer counts)
        if wake is not None:
            wake.cancel()
        state.wake = loop.call_at(
            when + 0.05, lambda: asyncio.ensure_future(self.reconcile(namespace, name))
        )

    def forget(self, namespace: str, name: str) -> None:
        state = self._runs.pop((namespace, name), None)
        if state is not None and state.wake is not None:
            state.wake.cancel()
        with self._metrics_lock:
            if state is not None:
                state.forgotten = True
            self.metrics.forget_run(namespace, name)

    def close(self) -> None:
        for state in self._runs.values():
            if state.wake is not None:
                state.wake.cancel()

    # --- one pass (worker thread) ------------------------------------------------------------

    def _pass(self, namespace: str, name: str, state: _RunState) -> PassResult:
        try:
            return self._pass_unsafe(namespace, name, state)
        except Exception as exc:  # API errors: retry soon, the timer is the safety net
            log.exception("reconcile of %s/%s failed", namespace, name)
            return PassResult(error=str(exc))

    def _pass_unsafe(self, namespace: str, name: str, state: _RunState) -> PassResult:
        body = self.api.get_run(namespace, name)
        meta = (body or {}).get("metadata") or {}
        if body is None or meta.get("deletionTimestamp"):
            return PassResult()
        status = body.get("status") or {}
        try:
            spec: EvoQualityRunSpec | Mapping[str, Any] = parse_spec(body.get("spec") or {})
        except SpecError:
            spec = body.get("spec") or {}  # reconcile reports it
        observed: list[ObservedJob] = []
        if isinstance(spec, EvoQualityRunSpec):
            observed = self._observe(namespace, name, meta.get("uid"), status)
        now = datetime.now(UTC)
        outcome = reconcile(RunRef(namespace, name), spec, status, observed, now)
        new_status = outcome.status
        if meta.get("generation") is not None:
            new_status["observedGeneration"] = meta["generation"]
        errors: list[str] = []
        requeue: float | None = None
        if isinstance(spec, EvoQualityRunSpec):
            ctx = jobs_module.RunContext(
                namespace, name, meta.get("uid", ""), spec, self.config.images
            )
            warnings = jobs_module.resource_warnings(ctx)
            set_condition(
                new_status,
                "ResourcesWarning",
                bool(warnings),
                "GpuPodWithoutRequests" if warnings else "RequestsSet",
                "; ".join(warnings) + " (set pods.<stage>.resources.requests or the chart's "
                "stageDefaults)"
                if warnings
                else "every GPU pod requests cpu and memory",
                now,
            )
            involved = {
                "apiVersion": f"{API_GROUP}/{API_VERSION}",
                "kind": KIND,
                "metadata": {"name": name, "namespace": namespace, "uid": meta.get("uid", "")},
            }
            requeue, errors = self._apply_all(ctx, state, involved, outcome, new_status, now)
        patch = merge_patch(status, new_status)
        if patch:
            self.api.patch_run_status(namespace, name, patch)
        self._export(namespace, name, new_status, state)
        return PassResult(outcome, requeue, "; ".join(errors) or None)

    def _observe(
        self, namespace: str, name: str, uid: str | None, status: Mapping[str, Any]
    ) -> list[ObservedJob]:
        stages = status.get("stages") or {}
        observed = []
        running_pods: dict[str, list[dict[str, Any]]] | None = None  # by Job, read once a pass
        for job in self.api.list("batch/v1", "Job", namespace, naming.run_selector(name)):
            meta = job.get("metadata", {})
            owners = meta.get("ownerReferences") or []
            if uid and owners and uid not in {o.get("uid") for o in owners}:
                continue  # left behind by an earlier run of the same name
            parsed = jobs_module.job_key(job)
            if parsed is None:
                continue
            key, attempt = parsed
            job_name = meta["name"]
            pods: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            finished = jobs_module.job_state(job) in (SUCCEEDED, FAILED)
            if finished and _needs_pods(stages.get(key.id), job_name, attempt):
                selector = f"{naming.JOB_NAME_LABEL}={job_name}"
                pods = self.api.list("v1", "Pod", namespace, selector)
            elif _may_wait(job):
                if running_pods is None:
                    running_pods = {}
                    for pod in self.api.list("v1", "Pod", namespace, naming.run_selector(name)):
                        labels = pod.get("metadata", {}).get("labels") or {}
                        running_pods.setdefault(labels.get(naming.JOB_NAME_LABEL, ""), []).append(
                            pod
                        )
                pods = running_pods.get(job_name, [])
                if not pods:  # no pod at all: the Job controller says why in an Event
                    fields = f"involvedObject.kind=Job,involvedObject.name={job_name}"
                    events = self.api.list("v1", "Event", namespace, "", fields)
            item = jobs_module.observe_job(job, pods, events)
            if item is not None:
                observed.append(item)
        return observed

    def _apply(
        self,
        ctx: jobs_module.RunContext,
        state: _RunState,
        action: Any,
        requeue: float | None,
    ) -> float | None:
        ns, run = ctx.namespace, ctx.name
        if isinstance(action, EnsureSpecConfigMap):
            if not state.configmap:
                self.api.create_or_adopt(jobs_module.spec_configmap(ctx))
                state.configmap = True
        elif isinstance(action, CreateJob):
            for obj in jobs_module.stage_objects(ctx, action.key, action.attempt, action.suspend):
                how = self.api.create_or_adopt(obj)
                log.info("%s/%s: %s %s %s", ns, run, how, obj["kind"], obj["metadata"]["name"])
        elif isinstance(action, SetJobSuspended):
            self.api.set_job_suspended(ns, action.name, action.suspend)
            log.info("%s/%s: Job %s suspend=%s", ns, run, action.name, action.suspend)
        elif isinstance(action, DeleteJob):
            self.api.delete_job(ns, action.name)
            log.info("%s/%s: Job %s deleted (stopped)", ns, run, action.name)
        elif isinstance(action, StageFailed):
            self.metrics.stage_failed(ns, run, action.key.round, action.key.stage)
            log.warning(
                "%s/%s: %s attempt %d failed%s: %s",
                ns,
                run,
                action.key.id,
                action.attempt,
                "" if not action.final else " (no retries left)",
                action.message,
            )
        elif isinstance(action, StageRetried):
            self.metrics.stage_retried(ns, run, action.key.round, action.key.stage)
        elif isinstance(action, RequeueAfter):
            requeue = action.seconds if requeue is None else min(requeue, action.seconds)
        return requeue

    def _apply_all(
        self,
        ctx: jobs_module.RunContext,
        state: _RunState,
        involved: Mapping[str, Any],
        outcome: Outcome,
        status: dict[str, Any],
        now: datetime,
    ) -> tuple[float | None, list[str]]:
        """Apply the actions in order, posting each one's Event. A create the API server refuses
        with a 4xx that repeating cannot fix fails its attempt (`refuse_create`: backoff, a
        Warning Event) instead of being retried every few seconds; a refused spec ConfigMap
        refuses the Jobs that need it. Returns the requeue delay and the errors to retry on."""
        requeue: float | None = None
        errors: list[str] = []
        refused_keys: set[tuple[StageKey, int]] = set()
        spec_refused: str | None = None
        pending = list(outcome.actions)
        while pending:
            action = pending.pop(0)
            if isinstance(action, StageStarted) and (action.key, action.attempt) in refused_keys:
                continue  # its Job was refused: no "created" Event
            refused = spec_refused if isinstance(action, CreateJob) else None
            if refused is None:
                try:
                    requeue = self._apply(ctx, state, action, requeue)
                    self._announce(involved, action, now)
                    continue
                except Exception as exc:
                    refused = _refused(exc)
                    if isinstance(action, EnsureSpecConfigMap) and refused is not None:
                        name = naming.spec_configmap_name(ctx.name)
                        spec_refused = f"ConfigMap {name} was refused: {refused}"
                        continue
                    if not isinstance(action, CreateJob) or refused is None:
                        log.warning("%s/%s: %s failed: %s", ctx.namespace, ctx.name, action, exc)
                        errors.append(str(exc))
                        if isinstance(action, EnsureSpecConfigMap):
                            break  # no Job without its own spec; the next pass creates them
                        continue
            log.warning("%s/%s: %s refused: %s", ctx.namespace, ctx.name, action.name, refused)
            refused_keys.add((action.key, action.attempt))
            run = RunRef(ctx.namespace, ctx.name)
            pending += refuse_create(
                run, ctx.spec, status, action.key, action.attempt, refused, now
            )
        return requeue, errors

    def _announce(self, involved: Mapping[str, Any], action: Any, now: datetime) -> None:
        """The Event (Normal or Warning) of a stage transition, on the run; never fails a pass."""
        event = _event_of(involved["metadata"]["name"], action)
        if event is None:
            return
        try:
            self.api.post_event(involved, *event, iso(now))
        except Exception as exc:  # an Event is a courtesy: log, do not retry the pass
            log.warning("%s: cannot post Event %s: %s", involved["metadata"]["name"], event, exc)

    def _export(
        self, namespace: str, name: str, status: Mapping[str, Any], state: _RunState
    ) -> None:
        """Level-based telemetry: phase and round, and each finished stage's summary once;
        nothing once the run is forgotten (deleted while this pass ran)."""
        with self._metrics_lock:
            if not state.forgotten:
                self._export_unlocked(namespace, name, status, state)

    def _export_unlocked(
        self, namespace: str, name: str, status: Mapping[str, Any], state: _RunState
    ) -> None:
        phase = status.get("phase", "Pending")
        self.metrics.set_phase(namespace, name, phase)
        if isinstance(status.get("round"), int):
            self.metrics.set_round(namespace, name, status["round"])
        rounds = status.get("rounds") or []
        for stage_id, entry in (status.get("stages") or {}).items():
            key = _key_of(entry)
            if key is None:
                continue
            if entry.get("state") == SUCCEEDED and stage_id not in state.observed:
                if key.round is None:
                    metrics = (status.get("base") or {}).get(key.stage) or {}
                else:
                    metrics = (
                        rounds[key.round].get(key.stage) or {} if key.round < len(rounds) else {}
                    )
                self.metrics.observe_summary(
                    namespace, name, key.round, key.stage, metrics, entry.get("durationSeconds")
                )
                state.observed.add(stage_id)
            elif entry.get("state") in ACTIVE_STATES and entry.get("state") != BACKING_OFF:
                marker = (stage_id, int(entry.get("attempt", 0)))
                if marker not in state.started:
                    started = parse_time(entry.get("startedAt"))
                    at = started.timestamp() if started else time.time()
                    # called through the class: in evoquality.telemetry the Gauge attribute
                    # `stage_started` shadows the method of the same name on instances
                    RunMetrics.stage_started(
                        self.metrics, namespace, name, key.round, key.stage, at=at
                    )
                    state.started.add(marker)


def _key_of(entry: Mapping[str, Any]) -> StageKey | None:
    with contextlib.suppress(KeyError, ValueError, TypeError):
        round_text = entry["round"]
        return StageKey(None if round_text == "base" else int(round_text), entry["stage"])
    return None


def _may_wait(job: Mapping[str, Any]) -> bool:
    """An unfinished, unsuspended Job whose pods are not all Ready: read why they wait."""
    spec, status = job.get("spec") or {}, job.get("status") or {}
    if spec.get("suspend") or (job.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return int(status.get("ready") or 0) < int(spec.get("parallelism") or 1)


def _refused(exc: Exception) -> str | None:
    """The API server's message for a 4xx that repeating the request cannot fix (not a
    conflict, not throttling), else None."""
    if not isinstance(exc, ApiException):
        return None
    status = int(exc.status or 0)
    if not 400 <= status < 500 or status in (409, 429):
        return None
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return f"{status} {exc.reason}: {message or exc.body or ''}".strip()


def _event_of(run: str, action: Any) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event for a stage transition, None for other actions."""
    if isinstance(action, StageStarted):
        job = naming.job_name(run, action.key.round, action.key.stage, action.attempt)
        return "Normal", "StageStarted", f"{action.key.id}: created Job {job}"
    if isinstance(action, StageSucceeded):
        took = f" in {action.duration_s:.0f} s" if action.duration_s is not None else ""
        return "Normal", "StageSucceeded", f"{action.key.id} succeeded{took}"
    if isinstance(action, StageRetried):
        return "Normal", "StageRetried", f"{action.key.id}: attempt {action.attempt}"
    if isinstance(action, StageDisrupted):
        return (
            "Warning",
            "StageDisrupted",
            (
                f"{action.key.id} attempt {action.attempt} disrupted (preemption or eviction), "
                f"retried as a whole, not counted: {action.message}"
            ),
        )
    if isinstance(action, StageFailed):
        final = " (no retry left)" if action.final else ""
        return (
            "Warning",
            "StageFailed",
            (f"{action.key.id} attempt {action.attempt} failed{final}: {action.message}"),
        )
    if isinstance(action, StageWaiting):
        return "Warning", action.reason or "PodsWaiting", f"{action.key.id}: {action.message}"
    return None


def _needs_pods(entry: Mapping[str, Any] | None, job_name: str, attempt: int) -> bool:
    """A finished Job's pods are read only until its outcome is recorded in the status."""
    if entry is None:
        return True
    if int(entry.get("attempt", 0)) > attempt:
        return False
    return not (
        entry.get("job") == job_name and entry.get("state") in (SUCCEEDED, FAILED, BACKING_OFF)
    )
