"""The operator's state machine: a pure function of spec, status, observed Jobs and the time.

`reconcile(run, spec, status, jobs, now)` returns the actions to apply (create a Job, suspend or
resume one, record telemetry, come back later) and the new status. It performs no I/O, so every
transition is unit-tested without a cluster, and it is level-based: called again with the same
inputs it returns the same status and no new Job, which is what makes operator restarts safe.

Stage graph of a run with T rounds (all names are `status.stages` keys):

    base-eval                                   (spec.evaluation.evaluateBase)
    r0-vote -> r0-rank -> r0-train -> r0-eval
                                   \\-> r1-vote -> r1-rank -> r1-train -> r1-eval ...

eval(r) runs alongside vote(r+1): both only need train(r). With spec.evaluation.earlyStopping,
vote(r+1) also waits for eval(r) (and base-eval), and the run ends `Succeeded` (reason
EarlyStopped) as soon as a round's validation SRCC is lower than the best so far.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from evoquality import summaries as run_summaries
from evoquality.spec import EvoQualityRunSpec, SpecError, parse_spec

from . import naming

STAGES = ("vote", "rank", "train", "eval")
PHASES = ("Pending", "Running", "Suspended", "Queued", "Succeeded", "Failed")
TERMINAL = ("Succeeded", "Failed")
# stage states kept in status.stages[<id>].state
PENDING, RUNNING, QUEUED, SUSPENDED, BACKING_OFF, SUCCEEDED, FAILED = (
    "Pending",
    "Running",
    "Queued",
    "Suspended",
    "BackingOff",
    "Succeeded",
    "Failed",
)
ACTIVE_STATES = (PENDING, RUNNING, QUEUED, SUSPENDED, BACKING_OFF)
VALIDATION_METRIC = "validation.srcc"
FALLBACK_METRIC = "wavg.srcc"


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageKey:
    round: int | None  # None: the base model's evaluation
    stage: str

    @property
    def id(self) -> str:
        return naming.stage_id(self.round, self.stage)


BASE_EVAL = StageKey(None, "eval")


@dataclass(frozen=True)
class RunRef:
    namespace: str
    name: str


@dataclass(frozen=True)
class ObservedJob:
    """What the operator reads of one child Job (and, once it finished, of its pods)."""

    name: str
    key: StageKey
    attempt: int
    state: str  # Pending | Running | Succeeded | Failed
    suspended: bool = False
    start_time: str | None = None
    completion_time: str | None = None
    summaries: tuple[Mapping[str, Any], ...] = ()  # stage summaries (one per vote shard)
    message: str = ""  # the failed pod's last message (termination message) or the Job's
    ready: int = 0  # pods that are or were Ready (status.ready + status.succeeded)
    expected: int = 1  # Ready pods that mean the attempt runs: every node of a gang, else one
    deleting: bool = False  # deletionTimestamp set: stopped, going away
    disrupted: bool = False  # failed because a pod was preempted or evicted (a gang's FailJob)
    waiting_reason: str = ""  # why its pods wait (ImagePullBackOff, Unschedulable, ...)
    waiting: str = ""  # the same with the pod's or the Event's message

    @property
    def finished(self) -> bool:
        return self.state in (SUCCEEDED, FAILED)


# ---------------------------------------------------------------------------------------------
# actions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnsureSpecConfigMap:
    """Create (or adopt) the run's `<run>-spec` ConfigMap; precedes every CreateJob."""


@dataclass(frozen=True)
class CreateJob:
    key: StageKey
    attempt: int
    name: str
    suspend: bool  # created suspended (Kueue admits it, or spec.suspend)


@dataclass(frozen=True)
class SetJobSuspended:
    name: str
    suspend: bool


@dataclass(frozen=True)
class DeleteJob:
    """Stop an unfinished Job by deleting it (Kueue owns `suspend` of the Jobs it manages)."""

    name: str


@dataclass(frozen=True)
class StageStarted:
    key: StageKey
    attempt: int
    at: float  # unix time


@dataclass(frozen=True)
class StageSucceeded:
    key: StageKey
    metrics: Mapping[str, Any]
    duration_s: float | None


@dataclass(frozen=True)
class StageFailed:
    key: StageKey
    attempt: int
    message: str
    final: bool  # no retry left: the run failed


@dataclass(frozen=True)
class StageRetried:
    key: StageKey
    attempt: int


@dataclass(frozen=True)
class StageDisrupted:
    """An attempt ended by preemption or eviction: retried at once, not counted as a failure."""

    key: StageKey
    attempt: int
    message: str


@dataclass(frozen=True)
class StageWaiting:
    """A stage's pods started waiting for a (new) reason: a Warning Event."""

    key: StageKey
    reason: str
    message: str


@dataclass(frozen=True)
class RequeueAfter:
    seconds: float


Action = (
    EnsureSpecConfigMap
    | CreateJob
    | SetJobSuspended
    | StageStarted
    | StageSucceeded
    | StageFailed
    | StageRetried
    | StageDisrupted
    | StageWaiting
    | DeleteJob
    | RequeueAfter
)


@dataclass
class Outcome:
    actions: list[Action] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):  # `actions, status = reconcile(...)`
        return iter((self.actions, self.status))


# ---------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def has_eval(spec: EvoQualityRunSpec) -> bool:
    """Eval stages exist only when there is something to evaluate on."""
    return bool(spec.evaluation.benchmarks) or spec.evaluation.validation is not None


def stage_plan(spec: EvoQualityRunSpec) -> list[StageKey]:
    """Every stage of the run, in start order."""
    plan: list[StageKey] = []
    evals = has_eval(spec)
    if evals and spec.evaluation.evaluate_base:
        plan.append(BASE_EVAL)
    for r in range(spec.rounds):
        plan += [StageKey(r, "vote"), StageKey(r, "rank"), StageKey(r, "train")]
        if evals:
            plan.append(StageKey(r, "eval"))
    return plan


def dependencies(spec: EvoQualityRunSpec, key: StageKey) -> list[StageKey]:
    if key.round is None:
        return []
    r = key.round
    if key.stage == "vote":
        if r == 0:
            return []
        deps = [StageKey(r - 1, "train")]
        if spec.evaluation.early_stopping:
            deps.append(StageKey(r - 1, "eval"))
            if spec.evaluation.evaluate_base:
                deps.append(BASE_EVAL)
        return deps
    previous = {"rank": "vote", "train": "rank", "eval": "train"}[key.stage]
    return [StageKey(r, previous)]


def stage_metrics(key: StageKey, summaries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The metrics of a finished stage from its summaries (merged over vote shards)."""
    metrics = [dict(s.get("metrics") or {}) for s in summaries]
    if key.stage == "vote":
        return run_summaries.merge_vote_metrics(metrics)
    return metrics[-1] if metrics else {}


def selection_metric(spec: EvoQualityRunSpec) -> str:
    """The metric that picks the best checkpoint: validation SRCC, else the benchmarks' wavg."""
    return VALIDATION_METRIC if spec.evaluation.validation is not None else FALLBACK_METRIC


def evaluations(status: Mapping[str, Any]) -> dict[int | None, Mapping[str, Any]]:
    """The eval metrics recorded in a status, by round (None = the base model)."""
    evals: dict[int | None, Mapping[str, Any]] = {}
    base = (status.get("base") or {}).get("eval")
    if base:
        evals[None] = base
    for entry in status.get("rounds") or []:
        if entry.get("eval"):
            evals[entry["round"]] = entry["eval"]
    return evals


def best_round(
    spec: EvoQualityRunSpec, status: Mapping[str, Any]
) -> tuple[int | None, float] | None:
    """(round or None for base, value) with the highest selection metric so far; ties: earliest."""
    round_index, value = run_summaries.best_round(evaluations(status))
    return None if value is None else (round_index, value)


def checkpoint_of(spec: EvoQualityRunSpec, status: Mapping[str, Any], round_index: int | None):
    if round_index is None:
        return spec.model.base
    rounds = status.get("rounds") or []
    if round_index < len(rounds):
        value = (rounds[round_index].get("train") or {}).get("checkpoint")
        if isinstance(value, str):
            return value
    return None


def set_condition(
    status: dict[str, Any], kind: str, value: bool, reason: str, message: str, now: datetime
) -> None:
    """Upsert a condition; lastTransitionTime moves only when the status flips."""
    text = "True" if value else "False"
    conditions = status.setdefault("conditions", [])
    for condition in conditions:
        if condition.get("type") == kind:
            if condition.get("status") != text:
                condition["lastTransitionTime"] = iso(now)
            condition.update(status=text, reason=reason, message=message)
            return
    conditions.append(
        {
            "type": kind,
            "status": text,
            "reason": reason,
            "message": message,
            "lastTransitionTime": iso(now),
        }
    )


def condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for item in status.get("conditions") or []:
        if item.get("type") == kind:
            return item
    return None


def _describe(key: StageKey) -> str:
    return "base evaluation" if key.round is None else f"{key.stage} of round {key.round}"


# ---------------------------------------------------------------------------------------------
# reconcile
# ---------------------------------------------------------------------------------------------


def reconcile(
    run: RunRef,
    spec: EvoQualityRunSpec | Mapping[str, Any],
    status: Mapping[str, Any] | None,
    jobs: Iterable[ObservedJob],
    now: datetime,
) -> Outcome:
    """One level-based pass: observe, decide, and describe what to do."""
    new = copy.deepcopy(dict(status or {}))
    out = Outcome(status=new)
    if not isinstance(spec, EvoQualityRunSpec):
        try:
            spec = parse_spec(spec)
        except SpecError as exc:
            _invalid_spec(new, str(exc), now)
            return out
    set_condition(new, "SpecValid", True, "Valid", "the spec is valid", now)
    new.setdefault("phase", "Pending")
    new["selectionMetric"] = selection_metric(spec)
    _ensure_rounds(new, spec)
    stages: dict[str, dict[str, Any]] = new.setdefault("stages", {})
    observed = list(jobs)
    by_key: dict[StageKey, list[ObservedJob]] = {}
    for job in observed:
        by_key.setdefault(job.key, []).append(job)

    if new["phase"] in TERMINAL:
        # Nothing more runs for a finished run; stop what is still running.
        out.actions.extend(_stop(spec, observed))
        return out

    recorded_queue = new.get("queueName")
    if recorded_queue is not None and recorded_queue != (spec.queue_name or ""):
        message = (
            f"queueName cannot change once the run has Jobs (was {recorded_queue or 'none'!r}, "
            f"now {spec.queue_name or 'none'!r}): set it back, or delete the run and create it "
            "again (committed stages are kept)"
        )
        set_condition(new, "SpecValid", False, "QueueNameChanged", message, now)
        return out

    plan = stage_plan(spec)
    final_failure: tuple[StageKey, str] | None = None
    wake: list[float] = []

    # 1. absorb what the Jobs report
    for key in plan:
        entry = stages.get(key.id)
        candidates = by_key.get(key, [])
        if entry is None:
            if not candidates:
                continue
            # a Job created before the status that records it was written: adopt it
            latest = max(candidates, key=lambda j: j.attempt)
            entry = stages[key.id] = _new_entry(key, latest.attempt, latest.name, now)
        else:
            newest = max((j.attempt for j in candidates), default=-1)
            if newest > entry["attempt"] and entry["state"] not in (SUCCEEDED, FAILED):
                entry.update(attempt=newest, state=PENDING, job=_job_of(candidates, newest).name)
                entry.pop("retryAt", None)
        if entry["state"] in (SUCCEEDED, FAILED, BACKING_OFF):
            if entry["state"] == FAILED:
                final_failure = (key, entry.get("message", ""))
            continue
        job = _job_of(candidates, entry["attempt"])
        if job is None:
            continue
        if job.state == SUCCEEDED:
            _record_success(spec, new, key, entry, job, now, out)
        elif job.state == FAILED:
            message = job.message or f"Job {job.name} failed"
            failure = _record_failure(spec, key, entry, message, now, out, job.disrupted)
            if failure is not None:
                final_failure = failure
        elif job.deleting:
            entry["state"] = SUSPENDED if spec.suspend else PENDING  # a stopped Job going away
        else:
            entry["state"] = _running_state(spec, job)
            _note_waiting(key, entry, job, out)
            failure = _check_pending_timeout(spec, key, entry, job, now, out, wake)
            if failure is not None:
                final_failure = failure

    if final_failure is not None:
        _fail(new, stages, final_failure, now, observed, out, spec)
        return out

    # 2. early stopping (validation SRCC fell below the best so far)
    stopped = _early_stop(spec, new, stages)
    if stopped is not None:
        _succeed(spec, new, now, reason="EarlyStopped", message=stopped, observed=observed, out=out)
        return out
    if all(stages.get(key.id, {}).get("state") == SUCCEEDED for key in plan):
        _succeed(
            spec,
            new,
            now,
            reason="Completed",
            message="all rounds evaluated",
            observed=observed,
            out=out,
        )
        return out

    # 3. suspension: spec.suspend stops every running Job and starts nothing
    if spec.suspend:
        out.actions.extend(_stop(spec, observed))
    elif spec.queue_name is None:
        for job in observed:
            if job.suspended and not job.finished and not job.deleting:
                out.actions.append(SetJobSuspended(job.name, False))

    # 4. start ready stages, retry backed-off ones, recreate lost Jobs
    creates: list[Action] = []
    if not spec.suspend:
        for key in plan:
            entry = stages.get(key.id)
            if entry is None:
                if all(
                    stages.get(d.id, {}).get("state") == SUCCEEDED for d in dependencies(spec, key)
                ):
                    entry = stages[key.id] = _new_entry(
                        key, 0, naming.job_name(run.name, key.round, key.stage, 0), now
                    )
                    creates.append(_create(run, spec, key, 0))
                    creates.append(StageStarted(key, 0, now.timestamp()))
                continue
            if entry["state"] == BACKING_OFF:
                due = parse_time(entry.get("retryAt")) or now
                if due <= now:
                    attempt = entry["attempt"] + 1
                    entry.update(
                        attempt=attempt,
                        state=PENDING,
                        job=naming.job_name(run.name, key.round, key.stage, attempt),
                        startedAt=iso(now),
                    )
                    for stale in ("retryAt", "readyAt", "waiting", "waitingReason"):
                        entry.pop(stale, None)
                    creates.append(_create(run, spec, key, attempt))
                    creates.append(StageRetried(key, attempt))
                    creates.append(StageStarted(key, attempt, now.timestamp()))
                else:
                    wake.append((due - now).total_seconds())
                continue
            if (
                entry["state"] in ACTIVE_STATES
                and _job_of(by_key.get(key, []), entry["attempt"]) is None
            ):
                creates.append(_create(run, spec, key, entry["attempt"]))  # lost or never created
    else:
        for key in plan:
            entry = stages.get(key.id)
            if entry is not None and entry["state"] in (PENDING, RUNNING, QUEUED):
                entry["state"] = SUSPENDED
                for stale in ("readyAt", "waiting", "waitingReason"):  # the Job starts anew
                    entry.pop(stale, None)
    if any(isinstance(a, CreateJob) for a in creates):
        out.actions.append(EnsureSpecConfigMap())
    if stages:
        new.setdefault("queueName", spec.queue_name or "")  # fixed from the first Job on
    out.actions.extend(creates)
    if wake:
        out.actions.append(RequeueAfter(max(min(wake), 0.0)))

    # 5. summary fields and conditions
    _summarise(spec, new, stages, plan, now)
    return out


def _ensure_rounds(status: dict[str, Any], spec: EvoQualityRunSpec) -> None:
    rounds = status.setdefault("rounds", [])
    while len(rounds) < spec.rounds:
        rounds.append({"round": len(rounds)})


def _new_entry(key: StageKey, attempt: int, job: str, now: datetime) -> dict[str, Any]:
    return {
        "round": naming.round_text(key.round),
        "stage": key.stage,
        "attempt": attempt,
        "job": job,
        "state": PENDING,
        "startedAt": iso(now),
    }


def _job_of(jobs: Sequence[ObservedJob], attempt: int) -> ObservedJob | None:
    for job in jobs:
        if job.attempt == attempt:
            return job
    return None


def _create(run: RunRef, spec: EvoQualityRunSpec, key: StageKey, attempt: int) -> CreateJob:
    return CreateJob(
        key=key,
        attempt=attempt,
        name=naming.job_name(run.name, key.round, key.stage, attempt),
        suspend=spec.queue_name is not None or spec.suspend,
    )


def _running_state(spec: EvoQualityRunSpec, job: ObservedJob) -> str:
    if job.suspended:
        if spec.suspend:
            return SUSPENDED
        return QUEUED if spec.queue_name is not None else SUSPENDED
    return RUNNING if job.ready > 0 and job.state == RUNNING else PENDING


def _stop(spec: EvoQualityRunSpec, observed: Iterable[ObservedJob]) -> list[Action]:
    """Stop the unfinished Jobs: delete them under Kueue (which un-suspends every Job it admits,
    so a suspend would be undone), else suspend them. One write per Job per stop."""
    actions: list[Action] = []
    for job in observed:
        if job.finished or job.deleting:
            continue
        if spec.queue_name is not None:
            actions.append(DeleteJob(job.name))
        elif not job.suspended:
            actions.append(SetJobSuspended(job.name, True))
    return actions


def _note_waiting(key: StageKey, entry: dict[str, Any], job: ObservedJob, out: Outcome) -> None:
    """Record why the stage's pods wait; a Warning Event when the reason is new."""
    if job.waiting and entry["state"] == PENDING:
        if entry.get("waiting") != job.waiting:
            out.actions.append(StageWaiting(key, job.waiting_reason, job.waiting))
        entry.update(waiting=job.waiting, waitingReason=job.waiting_reason)
    else:
        entry.pop("waiting", None)
        entry.pop("waitingReason", None)


def _check_pending_timeout(
    spec: EvoQualityRunSpec,
    key: StageKey,
    entry: dict[str, Any],
    job: ObservedJob,
    now: datetime,
    out: Outcome,
    wake: list[float],
) -> tuple[StageKey, str] | None:
    """Fail an attempt whose pods are not all Ready `pods.pendingTimeoutSeconds` after its Job
    started (Kueue: admitted); once they were, the attempt runs as long as it needs."""
    if job.suspended:  # queued or evicted by Kueue: once admitted again, the clock restarts
        entry.pop("readyAt", None)
        return None
    if job.ready >= job.expected:
        entry.setdefault("readyAt", iso(now))
        return None
    timeout = spec.pods.pending_timeout_seconds
    started = parse_time(job.start_time)
    if timeout is None or started is None or "readyAt" in entry:
        return None
    waited = (now - started).total_seconds()
    if waited < timeout:
        wake.append(timeout - waited)
        return None
    out.actions.append(DeleteJob(job.name))
    message = (
        f"{job.ready} of {job.expected} pod(s) Ready {timeout} s after Job {job.name} started "
        f"(pods.pendingTimeoutSeconds): {job.waiting or 'no pod reported why'}"
    )
    return _record_failure(spec, key, entry, message, now, out)


def _record_success(
    spec: EvoQualityRunSpec,
    status: dict[str, Any],
    key: StageKey,
    entry: dict[str, Any],
    job: ObservedJob,
    now: datetime,
    out: Outcome,
) -> None:
    metrics = stage_metrics(key, job.summaries)
    started = parse_time(job.start_time) or parse_time(entry.get("startedAt"))
    finished = parse_time(job.completion_time) or now
    duration = max((finished - started).total_seconds(), 0.0) if started else None
    entry.update(state=SUCCEEDED, completedAt=iso(finished))
    entry.pop("message", None)
    if duration is not None:
        entry["durationSeconds"] = round(duration, 3)
    if key.stage == "vote":
        entry["shardsReported"] = len(job.summaries)
    if key.round is None:
        status.setdefault("base", {})[key.stage] = metrics
    else:
        status["rounds"][key.round][key.stage] = metrics
        if key.stage == "train" and isinstance(metrics.get("checkpoint"), str):
            status["checkpoint"] = metrics["checkpoint"]
    out.actions.append(StageSucceeded(key, metrics, duration))


def _record_failure(
    spec: EvoQualityRunSpec,
    key: StageKey,
    entry: dict[str, Any],
    message: str,
    now: datetime,
    out: Outcome,
    disrupted: bool = False,
) -> tuple[StageKey, str] | None:
    """The current attempt failed: back off and retry, or fail the stage (no retry left). A
    disruption (preemption, eviction) is retried at once and counts toward neither (JobSet's
    `RestartJobSetAndIgnoreMaxRestarts`)."""
    attempt = entry["attempt"]
    entry["message"] = message
    for stale in ("waiting", "waitingReason", "readyAt"):
        entry.pop(stale, None)
    if disrupted:
        entry["disruptions"] = int(entry.get("disruptions", 0)) + 1
        entry.update(state=BACKING_OFF, retryAt=iso(now))
        out.actions.append(StageDisrupted(key, attempt, message))
        return None
    failures = int(entry.get("failures", 0)) + 1
    entry["failures"] = failures
    if failures <= spec.retries.max_retries:
        delay = spec.retries.backoff_seconds * (2 ** (failures - 1))
        entry.update(state=BACKING_OFF, retryAt=iso(now + timedelta(seconds=delay)))
        out.actions.append(StageFailed(key, attempt, message, final=False))
        return None
    entry["state"] = FAILED
    out.actions.append(StageFailed(key, attempt, message, final=True))
    return key, message


def refuse_create(
    run: RunRef,
    spec: EvoQualityRunSpec,
    status: dict[str, Any],
    key: StageKey,
    attempt: int,
    message: str,
    now: datetime,
) -> list[Action]:
    """The API server refused to create an attempt's Job (4xx: a quota, a webhook, an invalid
    field): the attempt failed with the API's message, with backoff like any failure."""
    entry = (status.get("stages") or {}).get(key.id)
    if entry is None or entry["attempt"] != attempt or entry["state"] not in ACTIVE_STATES:
        return []
    out = Outcome(status=status)
    name = naming.job_name(run.name, key.round, key.stage, attempt)
    failure = _record_failure(
        spec, key, entry, f"the API server refused Job {name}: {message}", now, out
    )
    if failure is not None:
        _fail(status, status["stages"], failure, now, (), out, spec)
    else:
        _summarise(spec, status, status["stages"], stage_plan(spec), now)
        due = parse_time(entry["retryAt"]) or now
        out.actions.append(RequeueAfter(max((due - now).total_seconds(), 0.0)))
    return out.actions


def _fail(
    status: dict[str, Any],
    stages: Mapping[str, Mapping[str, Any]],
    failure: tuple[StageKey, str],
    now: datetime,
    observed: Sequence[ObservedJob],
    out: Outcome,
    spec: EvoQualityRunSpec,
) -> None:
    key, message = failure
    attempts = stages[key.id]["attempt"] + 1
    text = f"{_describe(key)} failed after {attempts} attempt(s): {message}"
    status.update(phase="Failed", stage=key.stage)
    if key.round is not None:
        status["round"] = key.round
    set_condition(status, "Failed", True, "StageFailed", text, now)
    set_condition(status, "Ready", False, "Failed", text, now)
    set_condition(status, "Progressing", False, "Failed", text, now)
    out.actions.extend(_stop(spec, observed))


def _early_stop(
    spec: EvoQualityRunSpec, status: Mapping[str, Any], stages: Mapping[str, Mapping[str, Any]]
) -> str | None:
    """A message when a round's validation SRCC fell below the best before it, else None."""
    if not spec.evaluation.early_stopping:
        return None
    if spec.evaluation.evaluate_base and stages.get(BASE_EVAL.id, {}).get("state") != SUCCEEDED:
        return None
    evals = evaluations(status)
    for r in range(spec.rounds - 1):  # the last round ends the run anyway
        if stages.get(StageKey(r, "eval").id, {}).get("state") != SUCCEEDED:
            return None
        if run_summaries.should_stop_early(evals, r):
            before = {k: v for k, v in evals.items() if k is None or k < r}
            best, best_value = run_summaries.best_round(before)
            value = evals[r][VALIDATION_METRIC]
            return (
                f"validation SRCC of round {r} ({value:.4f}) fell below the best so far "
                f"({best_value:.4f}, round {naming.round_text(best)})"
            )
    return None


def _succeed(
    spec: EvoQualityRunSpec,
    status: dict[str, Any],
    now: datetime,
    reason: str,
    message: str,
    observed: Sequence[ObservedJob],
    out: Outcome,
) -> None:
    stages = status.get("stages") or {}
    _fill_best(spec, status)
    best = best_round(spec, status)
    if spec.evaluation.validation is not None and best is not None:
        checkpoint = checkpoint_of(spec, status, best[0])
    else:
        last = max(
            (r for r in range(spec.rounds) if StageKey(r, "train").id in stages), default=None
        )
        checkpoint = checkpoint_of(spec, status, last) if last is not None else None
    if checkpoint:
        status["checkpoint"] = checkpoint
    done = [StageKey(int(e["round"]), e["stage"]) for e in stages.values() if e["round"] != "base"]
    last_key = max(
        done, default=StageKey(0, "vote"), key=lambda k: (k.round, STAGES.index(k.stage))
    )
    status.update(phase="Succeeded", round=last_key.round, stage=last_key.stage)
    status.pop("activeStages", None)
    if reason == "EarlyStopped":
        status["earlyStopped"] = True
    set_condition(status, "Ready", True, reason, message, now)
    set_condition(status, "Progressing", False, reason, message, now)
    set_condition(status, "Failed", False, reason, message, now)
    out.actions.extend(_stop(spec, observed))


def _fill_best(spec: EvoQualityRunSpec, status: dict[str, Any]) -> None:
    best = best_round(spec, status)
    if best is None:
        return
    status["bestValidationSrcc"] = best[1]
    status["bestRound"] = naming.round_text(best[0])


def _invalid_spec(status: dict[str, Any], message: str, now: datetime) -> None:
    status["phase"] = "Failed"
    set_condition(status, "SpecValid", False, "InvalidSpec", message, now)
    set_condition(status, "Failed", True, "InvalidSpec", message, now)
    set_condition(status, "Ready", False, "InvalidSpec", message, now)
    set_condition(status, "Progressing", False, "InvalidSpec", message, now)


def _summarise(
    spec: EvoQualityRunSpec,
    status: dict[str, Any],
    stages: Mapping[str, Mapping[str, Any]],
    plan: Sequence[StageKey],
    now: datetime,
) -> None:
    _fill_best(spec, status)
    entries = [(key, stages[key.id]) for key in plan if key.id in stages]
    active = [(key, e) for key, e in entries if e["state"] in ACTIVE_STATES]
    in_rounds = [key for key, _ in entries if key.round is not None]
    if in_rounds:
        current = max(in_rounds, key=lambda k: (k.round, STAGES.index(k.stage)))
        status["round"], status["stage"] = current.round, current.stage
    else:
        status["round"], status["stage"] = 0, "vote"
    status["activeStages"] = [key.id for key, _ in active]
    states = {e["state"] for _, e in active}
    anything_done = any(e["state"] == SUCCEEDED for _, e in entries)
    described = (
        ", ".join(
            f"{key.id} ({e['state']}: {e['waitingReason']})"
            if e.get("waitingReason")
            else f"{key.id} ({e['state']})"
            for key, e in active
        )
        or "nothing"
    )
    waiting = [(key, e) for key, e in active if e.get("waiting")]
    if waiting:
        text = "; ".join(f"{key.id}: {e['waiting']}" for key, e in waiting)
        set_condition(status, "PodsReady", False, waiting[0][1]["waitingReason"], text, now)
    else:
        set_condition(status, "PodsReady", True, "NotWaiting", "no stage's pods are waiting", now)
    if spec.suspend:
        phase, reason, message = "Suspended", "Suspended", "spec.suspend is true"
    elif RUNNING in states:
        phase, reason, message = "Running", "StageRunning", described
    elif QUEUED in states:
        phase, reason, message = "Queued", "Queued", f"waiting for Kueue to admit: {described}"
    elif not anything_done and states <= {PENDING}:
        phase, reason, message = "Pending", "Pending", described
    else:
        phase, reason, message = "Running", "StageRunning", described
    status["phase"] = phase
    set_condition(status, "Progressing", phase != "Suspended", reason, message, now)
    set_condition(status, "Ready", False, phase, message, now)
    set_condition(status, "Failed", False, "NoFailure", "", now)
