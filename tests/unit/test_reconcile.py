"""The operator's pure state machine, transition by transition (no cluster, no kopf)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from evoquality_operator.reconcile import (
    BASE_EVAL,
    CreateJob,
    DeleteJob,
    EnsureSpecConfigMap,
    ObservedJob,
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
    condition,
    dependencies,
    reconcile,
    refuse_create,
    stage_plan,
)

from evoquality.spec import parse_spec

RUN = RunRef("ml", "demo")
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def make_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "data": {"manifest": "s3://bucket/pool.csv"},
        "storage": {"uri": "s3://bucket/runs"},
        "rounds": 2,
        "evaluation": {"benchmarks": [{"name": "syniqa", "manifest": "s3://b/syniqa.csv"}]},
        "retries": {"maxRetries": 1, "backoffSeconds": 10},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


def metrics_for(key: StageKey, shard: int = 0, val: float | None = None) -> dict[str, Any]:
    r = -1 if key.round is None else key.round
    if key.stage == "vote":
        return {
            "pairs": 10 * (shard + 1),
            "votes": 40 * (shard + 1),
            "agreement": 0.8 + shard / 10,
            "abstention_rate": 0.1,
        }
    if key.stage == "rank":
        return {"labels": 30, "tie_rate": 0.1}
    if key.stage == "train":
        return {"reward_mean": 0.6 + r / 10, "kl": 0.01, "checkpoint": f"s3://ckpt/{r}"}
    out = {"syniqa.srcc": 0.5 + r / 10, "syniqa.plcc": 0.5, "wavg.srcc": 0.5 + r / 10}
    if val is not None:
        out["validation.srcc"] = val
    return out


def summaries(key: StageKey, shards: int = 1, val: float | None = None):
    return tuple(
        {
            "stage": key.stage,
            "round": key.round if key.round is not None else "base",
            "metrics": metrics_for(key, i, val),
        }
        for i in range(shards)
    )


def job(action: CreateJob, state: str = "Running", **kw: Any) -> ObservedJob:
    return ObservedJob(
        name=action.name,
        key=action.key,
        attempt=action.attempt,
        state=state,
        suspended=kw.pop("suspended", action.suspend),
        ready=kw.pop("ready", 1 if state == "Running" else 0),  # a running Job's pod is Ready
        **kw,
    )


def creates(actions) -> list[CreateJob]:
    return [a for a in actions if isinstance(a, CreateJob)]


class FakeCluster:
    """Plays the Job controller for the pure function: every created Job finishes at once."""

    def __init__(
        self,
        spec: dict[str, Any],
        fail: dict[tuple[str, int], str] | None = None,
        validation: dict[str, float] | None = None,
    ) -> None:
        self.spec = spec
        self.jobs: dict[str, ObservedJob] = {}
        self.status: dict[str, Any] = {}
        self.fail = fail or {}
        self.validation = validation or {}
        self.created: list[str] = []
        self.now = T0

    def step(self):
        actions, self.status = reconcile(RUN, self.spec, self.status, self.jobs.values(), self.now)
        for action in creates(actions):
            assert action.name not in self.jobs, f"{action.name} created twice"
            self.created.append(action.name)
            key = action.key
            if (key.id, action.attempt) in self.fail:
                self.jobs[action.name] = job(
                    action, "Failed", message=self.fail[(key.id, action.attempt)]
                )
            else:
                shards = parse_spec(self.spec).voting.shards if key.stage == "vote" else 1
                self.jobs[action.name] = job(
                    action,
                    "Succeeded",
                    start_time="2025-01-01T00:00:00Z",
                    completion_time="2025-01-01T00:01:40Z",
                    summaries=summaries(key, shards, self.validation.get(key.id)),
                )
        return actions

    def run(self, limit: int = 50) -> None:
        for _ in range(limit):
            actions = self.step()
            if self.status.get("phase") in ("Succeeded", "Failed"):
                return
            wake = [a.seconds for a in actions if isinstance(a, RequeueAfter)]
            if wake:
                self.now += timedelta(seconds=min(wake))
        raise AssertionError("did not finish")


# --- plan ------------------------------------------------------------------------------------


def test_plan_and_dependencies():
    spec = parse_spec(make_spec())
    assert [k.id for k in stage_plan(spec)] == [
        "base-eval",
        "r0-vote",
        "r0-rank",
        "r0-train",
        "r0-eval",
        "r1-vote",
        "r1-rank",
        "r1-train",
        "r1-eval",
    ]
    assert dependencies(spec, StageKey(1, "vote")) == [StageKey(0, "train")]
    assert dependencies(spec, StageKey(0, "eval")) == [StageKey(0, "train")]
    early = parse_spec(
        make_spec(
            evaluation={
                "validation": {"name": "val", "manifest": "s3://b/val.csv"},
                "earlyStopping": True,
            }
        )
    )
    assert dependencies(early, StageKey(1, "vote")) == [
        StageKey(0, "train"),
        StageKey(0, "eval"),
        BASE_EVAL,
    ]
    no_eval = parse_spec(make_spec(evaluation={"benchmarks": []}))
    assert [k.stage for k in stage_plan(no_eval)] == ["vote", "rank", "train"] * 2


# --- transitions -----------------------------------------------------------------------------


def test_invalid_spec_fails_naming_the_field():
    actions, status = reconcile(RUN, make_spec(rounds=0), {}, [], T0)
    assert actions == []
    assert status["phase"] == "Failed"
    valid = condition(status, "SpecValid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
    assert "spec.rounds" in valid["message"]
    assert condition(status, "Failed")["status"] == "True"


def test_fresh_run_starts_vote_and_base_eval_then_is_idempotent():
    actions, status = reconcile(RUN, make_spec(), {}, [], T0)
    assert isinstance(actions[0], EnsureSpecConfigMap)
    made = creates(actions)
    assert [(c.key.id, c.name, c.suspend) for c in made] == [
        ("base-eval", "demo-base-eval", False),
        ("r0-vote", "demo-r0-vote", False),
    ]
    assert sum(isinstance(a, StageStarted) for a in actions) == 2
    assert status["phase"] == "Pending"
    assert status["stages"]["r0-vote"]["state"] == "Pending"
    assert status["round"] == 0 and status["stage"] == "vote"
    assert condition(status, "SpecValid")["status"] == "True"
    assert len(status["rounds"]) == 2
    # same inputs plus the Jobs now observed: no new Job, same status
    observed = [job(c, "Pending") for c in made]
    again, status2 = reconcile(RUN, make_spec(), status, observed, T0 + timedelta(seconds=5))
    assert creates(again) == [] and status2 == status
    running = [job(c, "Running") for c in made]
    _, status3 = reconcile(RUN, make_spec(), status2, running, T0)
    assert status3["phase"] == "Running"
    assert condition(status3, "Progressing")["status"] == "True"


def test_vote_success_records_merged_shards_and_starts_rank():
    spec = make_spec(voting={"shards": 3}, evaluation={"benchmarks": []})
    actions, status = reconcile(RUN, spec, {}, [], T0)
    vote = creates(actions)[0]
    done = job(
        vote,
        "Succeeded",
        start_time="2025-01-01T00:00:00Z",
        completion_time="2025-01-01T00:02:00Z",
        summaries=summaries(vote.key, 3),
    )
    actions, status = reconcile(RUN, spec, status, [done], T0 + timedelta(minutes=3))
    assert [c.key.id for c in creates(actions)] == ["r0-rank"]
    success = [a for a in actions if isinstance(a, StageSucceeded)][0]
    assert success.duration_s == 120.0
    merged = status["rounds"][0]["vote"]
    assert merged["pairs"] == 60 and merged["votes"] == 240
    assert merged["agreement"] == pytest.approx((0.8 * 10 + 0.9 * 20 + 1.0 * 30) / 60)
    assert status["stages"]["r0-vote"]["state"] == "Succeeded"
    assert status["stages"]["r0-vote"]["shardsReported"] == 3
    assert status["stage"] == "rank" and status["phase"] == "Running"


def test_two_rounds_complete_with_eval_alongside_next_vote():
    cluster = FakeCluster(make_spec())
    cluster.step()  # base-eval + r0-vote
    cluster.step()  # r0-rank
    cluster.step()  # r0-train
    actions = cluster.step()  # r0-eval and r1-vote together
    assert sorted(c.key.id for c in creates(actions)) == ["r0-eval", "r1-vote"]
    cluster.run()
    status = cluster.status
    assert status["phase"] == "Succeeded"
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Ready")["reason"] == "Completed"
    assert status["checkpoint"] == "s3://ckpt/1"  # no validation set: the last round's model
    assert status["selectionMetric"] == "wavg.srcc"
    assert status["bestValidationSrcc"] == pytest.approx(0.6) and status["bestRound"] == "1"
    assert status["rounds"][1]["eval"]["syniqa.srcc"] == pytest.approx(0.6)
    assert status["base"]["eval"]["syniqa.srcc"] == pytest.approx(0.4)
    assert status["rounds"][0]["rank"]["labels"] == 30
    assert len(cluster.created) == 9 == len(set(cluster.created))
    # a finished run does nothing more
    actions, again = reconcile(RUN, cluster.spec, status, cluster.jobs.values(), T0)
    assert actions == [] and again == status


def test_early_stopping_waits_for_eval_and_stops_on_a_drop():
    spec = make_spec(
        rounds=3,
        evaluation={
            "validation": {"name": "val", "manifest": "s3://b/val.csv"},
            "earlyStopping": True,
        },
    )
    validation = {"base-eval": 0.5, "r0-eval": 0.7, "r1-eval": 0.6, "r2-eval": 0.9}
    cluster = FakeCluster(spec, validation=validation)
    for _ in range(3):
        cluster.step()
    actions = cluster.step()
    assert [c.key.id for c in creates(actions)] == ["r0-eval"]  # r1-vote waits for it
    cluster.run()
    status = cluster.status
    assert status["phase"] == "Succeeded" and status["earlyStopped"] is True
    ready = condition(status, "Ready")
    assert ready["reason"] == "EarlyStopped" and "round 1" in ready["message"]
    assert status["checkpoint"] == "s3://ckpt/0"  # the best round's model
    assert status["bestValidationSrcc"] == 0.7 and status["bestRound"] == "0"
    assert status["selectionMetric"] == "validation.srcc"
    assert "demo-r2-vote" not in cluster.created


def test_validation_picks_the_best_checkpoint_without_early_stopping():
    spec = make_spec(evaluation={"validation": {"name": "val", "manifest": "s3://b/val.csv"}})
    cluster = FakeCluster(spec, validation={"base-eval": 0.9, "r0-eval": 0.7, "r1-eval": 0.8})
    cluster.run()
    assert cluster.status["phase"] == "Succeeded"
    assert cluster.status["bestRound"] == "base"
    assert cluster.status["checkpoint"] == "Qwen/Qwen2.5-VL-7B-Instruct"


def test_failed_stage_backs_off_retries_then_fails_the_run():
    spec = make_spec(evaluation={"benchmarks": []}, retries={"maxRetries": 1, "backoffSeconds": 10})
    actions, status = reconcile(RUN, spec, {}, [], T0)
    vote = creates(actions)[0]
    failed = job(vote, "Failed", message="CUDA out of memory")
    actions, status = reconcile(RUN, spec, status, [failed], T0)
    assert creates(actions) == []
    assert [a for a in actions if isinstance(a, StageFailed)][0].final is False
    assert [a.seconds for a in actions if isinstance(a, RequeueAfter)] == [10.0]
    entry = status["stages"]["r0-vote"]
    assert entry["state"] == "BackingOff" and entry["message"] == "CUDA out of memory"
    assert status["phase"] == "Running"
    # not yet due
    actions, status = reconcile(RUN, spec, status, [failed], T0 + timedelta(seconds=5))
    assert creates(actions) == [] and [a.seconds for a in actions if isinstance(a, RequeueAfter)]
    # due: attempt 1
    actions, status = reconcile(RUN, spec, status, [failed], T0 + timedelta(seconds=10))
    retry = creates(actions)
    assert [c.name for c in retry] == ["demo-r0-vote-a1"]
    assert any(isinstance(a, StageRetried) for a in actions)
    failed2 = job(retry[0], "Failed", message="CUDA out of memory again")
    actions, status = reconcile(RUN, spec, status, [failed, failed2], T0 + timedelta(seconds=30))
    assert creates(actions) == []
    assert status["phase"] == "Failed"
    failure = condition(status, "Failed")
    assert failure["status"] == "True" and failure["reason"] == "StageFailed"
    assert "vote of round 0" in failure["message"] and "2 attempt" in failure["message"]
    assert "CUDA out of memory again" in failure["message"]
    assert status["stages"]["r0-vote"]["failures"] == 2


def test_backoff_doubles_per_attempt():
    spec = make_spec(evaluation={"benchmarks": []}, retries={"maxRetries": 3, "backoffSeconds": 10})
    fail = {("r0-vote", 0): "x", ("r0-vote", 1): "y"}
    cluster = FakeCluster(spec, fail=fail)
    waits = []
    for _ in range(8):
        actions = cluster.step()
        waits += [a.seconds for a in actions if isinstance(a, RequeueAfter)]
        if waits and not creates(actions) and any(isinstance(a, RequeueAfter) for a in actions):
            cluster.now += timedelta(seconds=waits[-1])
    assert waits[:2] == [10.0, 20.0]
    assert "demo-r0-vote-a2" in cluster.created


def test_suspend_and_resume():
    spec = make_spec(evaluation={"benchmarks": []})
    actions, status = reconcile(RUN, spec, {}, [], T0)
    vote = job(creates(actions)[0], "Running")
    actions, status = reconcile(RUN, {**spec, "suspend": True}, status, [vote], T0)
    assert actions == [SetJobSuspended("demo-r0-vote", True)]
    assert status["phase"] == "Suspended"
    assert condition(status, "Progressing")["status"] == "False"
    suspended = job(creates(reconcile(RUN, spec, {}, [], T0).actions)[0], "Pending", suspended=True)
    # while suspended, a finished vote does not start rank
    done = job(
        creates(reconcile(RUN, spec, {}, [], T0).actions)[0],
        "Succeeded",
        summaries=summaries(StageKey(0, "vote")),
    )
    actions, _ = reconcile(RUN, {**spec, "suspend": True}, status, [done], T0)
    assert creates(actions) == []
    actions, status = reconcile(RUN, spec, status, [suspended], T0)
    assert actions == [SetJobSuspended("demo-r0-vote", False)]


def test_kueue_jobs_are_created_suspended_and_never_unsuspended():
    spec = make_spec(evaluation={"benchmarks": []}, queueName="gpu-queue")
    actions, status = reconcile(RUN, spec, {}, [], T0)
    vote = creates(actions)[0]
    assert vote.suspend is True
    actions, status = reconcile(RUN, spec, status, [job(vote, "Pending", suspended=True)], T0)
    assert actions == [] and status["phase"] == "Queued"
    assert status["stages"]["r0-vote"]["state"] == "Queued"
    # admitted by Kueue
    actions, status = reconcile(RUN, spec, status, [job(vote, "Running", suspended=False)], T0)
    assert actions == [] and status["phase"] == "Running"


class KueueCluster:
    """Jobs as Kueue and the Job controller keep them: Kueue un-suspends every suspended Job of
    its queue (admission), a suspend patch is a write, a delete removes the Job."""

    def __init__(self) -> None:
        self.jobs: dict[str, ObservedJob] = {}
        self.writes: list[object] = []

    def apply(self, actions) -> None:
        for action in actions:
            if isinstance(action, CreateJob):
                self.jobs[action.name] = job(action, "Pending", suspended=True)
            elif isinstance(action, SetJobSuspended):
                self.writes.append(action)
                self.jobs[action.name] = replace(self.jobs[action.name], suspended=action.suspend)
            elif isinstance(action, DeleteJob):
                self.writes.append(action)
                del self.jobs[action.name]

    def admit(self) -> None:
        for name, observed in self.jobs.items():
            if observed.suspended and not observed.finished:
                self.jobs[name] = replace(observed, suspended=False, state="Running", ready=1)


@pytest.mark.parametrize("stop", ["suspend", "run failed"])
def test_kueue_stop_is_one_write_over_50_reconciles_and_resume_is_no_failure(stop):
    spec = make_spec(
        evaluation={"benchmarks": []}, queueName="gpu-queue", retries={"maxRetries": 0}
    )
    cluster = KueueCluster()
    actions, status = reconcile(RUN, spec, {}, [], T0)
    cluster.apply(actions)
    cluster.admit()
    _, status = reconcile(RUN, spec, status, list(cluster.jobs.values()), T0)
    assert status["stages"]["r0-vote"]["state"] == "Running"
    stopped = {**spec, "suspend": True} if stop == "suspend" else spec
    if stop == "run failed":  # a stage failed for good while vote runs: the run is Failed
        status["phase"] = "Failed"
    for _ in range(50):
        actions, status = reconcile(RUN, stopped, status, list(cluster.jobs.values()), T0)
        cluster.apply(actions)
        cluster.admit()  # Kueue admits whatever is suspended
    assert cluster.writes == [DeleteJob("demo-r0-vote")]
    assert cluster.jobs == {}
    if stop == "run failed":
        return
    assert status["phase"] == "Suspended" and status["stages"]["r0-vote"]["state"] == "Suspended"
    # resume: the same attempt again, created suspended for Kueue; no failure, no backoff
    actions, status = reconcile(RUN, spec, status, [], T0)
    assert [(c.name, c.suspend) for c in creates(actions)] == [("demo-r0-vote", True)]
    assert not [a for a in actions if isinstance(a, StageFailed | StageRetried)]
    entry = status["stages"]["r0-vote"]
    assert entry["attempt"] == 0 and "failures" not in entry and "retryAt" not in entry


def test_a_stopped_job_that_is_still_going_away_is_not_created_again():
    spec = make_spec(evaluation={"benchmarks": []}, queueName="gpu-queue")
    actions, status = reconcile(RUN, spec, {}, [], T0)
    going = job(creates(actions)[0], "Running", suspended=False, deleting=True)
    actions, status = reconcile(RUN, spec, status, [going], T0)
    assert actions == [] and status["stages"]["r0-vote"]["state"] == "Pending"
    actions, _ = reconcile(RUN, spec, status, [], T0)  # gone: created again
    assert [c.name for c in creates(actions)] == ["demo-r0-vote"]


def test_queue_name_is_fixed_once_the_run_has_jobs():
    spec = make_spec(evaluation={"benchmarks": []}, queueName="gpu-queue")
    actions, status = reconcile(RUN, spec, {}, [], T0)
    vote = job(creates(actions)[0], "Running", suspended=False)
    _, status = reconcile(RUN, spec, status, [vote], T0)
    assert status["queueName"] == "gpu-queue"
    for other in ("cpu-queue", None):
        actions, changed = reconcile(RUN, {**spec, "queueName": other}, status, [vote], T0)
        assert actions == [] and changed["stages"] == status["stages"]
        valid = condition(changed, "SpecValid")
        assert valid["status"] == "False" and valid["reason"] == "QueueNameChanged"
        assert "gpu-queue" in valid["message"]
    _, back = reconcile(RUN, spec, changed, [vote], T0)  # set back: valid again
    assert condition(back, "SpecValid")["status"] == "True"
    plain = make_spec(evaluation={"benchmarks": []})
    _, status = reconcile(RUN, plain, {}, [], T0)
    assert status["queueName"] == ""  # no queue is fixed too
    _, changed = reconcile(RUN, {**plain, "queueName": "gpu-queue"}, status, [], T0)
    assert condition(changed, "SpecValid")["reason"] == "QueueNameChanged"


def test_a_disrupted_gang_attempt_is_retried_at_once_without_counting():
    spec = make_spec(evaluation={"benchmarks": []}, retries={"maxRetries": 0, "backoffSeconds": 60})
    actions, status = reconcile(RUN, spec, {}, [], T0)
    vote = creates(actions)[0]
    evicted = job(vote, "Failed", message="DisruptionTarget", disrupted=True)
    actions, status = reconcile(RUN, spec, status, [evicted], T0)
    assert [c.name for c in creates(actions)] == ["demo-r0-vote-a1"]  # at once, no backoff
    assert [type(a) for a in actions if isinstance(a, StageFailed | StageDisrupted)] == [
        StageDisrupted
    ]
    entry = status["stages"]["r0-vote"]
    assert entry["disruptions"] == 1 and "failures" not in entry and status["phase"] != "Failed"
    # a real failure of the next attempt still fails the stage (maxRetries 0)
    failed = job(creates(actions)[0], "Failed", message="boom")
    _, status = reconcile(RUN, spec, status, [evicted, failed], T0)
    assert status["phase"] == "Failed" and status["stages"]["r0-vote"]["failures"] == 1


def test_pods_not_ready_within_the_pending_timeout_fail_the_attempt():
    spec = make_spec(
        evaluation={"benchmarks": []},
        training={"nodes": 2, "gpusPerNode": 1},
        pods={"pendingTimeoutSeconds": 600},
    )
    actions, status = reconcile(RUN, spec, {}, [], T0)
    vote = creates(actions)[0]
    start = T0.strftime("%Y-%m-%dT%H:%M:%SZ")
    waiting = job(
        vote, "Running", ready=0, start_time=start, waiting_reason="Unschedulable",
        waiting="pod demo-r0-vote-0: Unschedulable: 0/4 nodes are available",
    )  # fmt: skip
    actions, status = reconcile(RUN, spec, status, [waiting], T0 + timedelta(seconds=100))
    assert [a.seconds for a in actions if isinstance(a, RequeueAfter)] == [500.0]
    assert status["stages"]["r0-vote"]["state"] == "Pending"
    actions, status = reconcile(RUN, spec, status, [waiting], T0 + timedelta(seconds=601))
    assert DeleteJob("demo-r0-vote") in actions
    entry = status["stages"]["r0-vote"]
    assert entry["state"] == "BackingOff" and entry["failures"] == 1
    assert "0 of 1 pod(s) Ready 600 s after" in entry["message"]
    assert "Unschedulable: 0/4 nodes" in entry["message"]
    # a gang: every node's pod must be Ready; once they were, the attempt runs unbounded
    _, status = reconcile(RUN, spec, {}, [], T0)
    half = job(vote, "Running", ready=1, expected=2, start_time=start)
    actions, _ = reconcile(RUN, spec, status, [half], T0 + timedelta(seconds=601))
    assert DeleteJob("demo-r0-vote") in actions
    whole = job(vote, "Running", ready=2, expected=2, start_time=start)
    _, status = reconcile(RUN, spec, status, [whole], T0 + timedelta(seconds=10))
    actions, status = reconcile(RUN, spec, status, [half], T0 + timedelta(hours=20))
    assert (
        not [a for a in actions if isinstance(a, DeleteJob)]
        and "readyAt" in (status["stages"]["r0-vote"])
    )


def test_why_pods_wait_is_in_the_stage_a_condition_and_one_event():
    spec = make_spec(evaluation={"benchmarks": []})
    actions, status = reconcile(RUN, spec, {}, [], T0)
    vote = creates(actions)[0]
    text = 'pod demo-r0-vote-0: ImagePullBackOff: Back-off pulling image "voter:9"'
    waiting = job(vote, "Running", ready=0, waiting_reason="ImagePullBackOff", waiting=text)
    actions, status = reconcile(RUN, spec, status, [waiting], T0)
    assert [a for a in actions if isinstance(a, StageWaiting)] == [
        StageWaiting(StageKey(0, "vote"), "ImagePullBackOff", text)
    ]
    entry = status["stages"]["r0-vote"]
    assert entry["state"] == "Pending" and entry["waitingReason"] == "ImagePullBackOff"
    ready = condition(status, "PodsReady")
    assert ready["status"] == "False" and ready["reason"] == "ImagePullBackOff"
    assert text in ready["message"]
    assert "r0-vote (Pending: ImagePullBackOff)" in condition(status, "Progressing")["message"]
    actions, status = reconcile(RUN, spec, status, [waiting], T0)  # the same reason: no Event
    assert not [a for a in actions if isinstance(a, StageWaiting)]
    actions, status = reconcile(RUN, spec, status, [job(vote, "Running")], T0)
    assert condition(status, "PodsReady")["status"] == "True"
    assert status["stages"]["r0-vote"]["state"] == "Running"
    assert "waiting" not in status["stages"]["r0-vote"]


def test_a_refused_create_is_a_failed_attempt_with_backoff():
    spec = make_spec(evaluation={"benchmarks": []}, retries={"maxRetries": 1, "backoffSeconds": 10})
    actions, status = reconcile(RUN, spec, {}, [], T0)
    parsed = parse_spec(spec)
    quota = '403 Forbidden: jobs "demo-r0-vote" is forbidden: exceeded quota: gpu'
    more = refuse_create(RUN, parsed, status, StageKey(0, "vote"), 0, quota, T0)
    entry = status["stages"]["r0-vote"]
    assert entry["state"] == "BackingOff" and "exceeded quota: gpu" in entry["message"]
    assert [a.seconds for a in more if isinstance(a, RequeueAfter)] == [10.0]
    assert [a.final for a in more if isinstance(a, StageFailed)] == [False]
    actions, status = reconcile(RUN, spec, status, [], T0 + timedelta(seconds=10))
    assert [c.name for c in creates(actions)] == ["demo-r0-vote-a1"]
    more = refuse_create(RUN, parsed, status, StageKey(0, "vote"), 1, quota, T0)
    assert (
        status["phase"] == "Failed" and "exceeded quota" in condition(status, "Failed")["message"]
    )
    assert [a.final for a in more if isinstance(a, StageFailed)] == [True]


def test_adopts_jobs_the_status_does_not_know():
    spec = make_spec(evaluation={"benchmarks": []})
    first = creates(reconcile(RUN, spec, {}, [], T0).actions)[0]
    # crash after creating the Job, before writing status: the Job is adopted, not re-created
    actions, status = reconcile(RUN, spec, {}, [job(first, "Running")], T0)
    assert creates(actions) == [] and status["stages"]["r0-vote"]["job"] == "demo-r0-vote"
    # crash after creating attempt 1 but with the BackingOff status: attempt 1 is adopted
    failed = job(first, "Failed", message="boom")
    _, status = reconcile(RUN, spec, status, [failed], T0)
    retry = ObservedJob("demo-r0-vote-a1", StageKey(0, "vote"), 1, "Running", ready=1)
    actions, status = reconcile(RUN, spec, status, [failed, retry], T0)
    assert creates(actions) == []
    assert status["stages"]["r0-vote"]["attempt"] == 1
    assert status["stages"]["r0-vote"]["state"] == "Running"


def test_lost_job_is_recreated_with_the_same_name():
    spec = make_spec(evaluation={"benchmarks": []})
    _, status = reconcile(RUN, spec, {}, [], T0)
    actions, _ = reconcile(RUN, spec, status, [], T0)
    assert [c.name for c in creates(actions)] == ["demo-r0-vote"]


def test_conditions_keep_their_transition_time():
    spec = make_spec(evaluation={"benchmarks": []})
    actions, status = reconcile(RUN, spec, {}, [], T0)
    vote = job(creates(actions)[0], "Running")
    _, status = reconcile(RUN, spec, status, [vote], T0 + timedelta(minutes=1))
    first = condition(status, "Progressing")["lastTransitionTime"]
    _, status = reconcile(RUN, spec, status, [vote], T0 + timedelta(minutes=2))
    assert condition(status, "Progressing")["lastTransitionTime"] == first
    _, status = reconcile(RUN, {**spec, "suspend": True}, status, [vote], T0 + timedelta(hours=1))
    assert condition(status, "Progressing")["lastTransitionTime"] == "2025-01-01T01:00:00Z"


def test_failed_run_suspends_what_still_runs():
    spec = make_spec(retries={"maxRetries": 0, "backoffSeconds": 0})
    actions, status = reconcile(RUN, spec, {}, [], T0)
    base, vote = creates(actions)
    observed = [job(base, "Running"), job(vote, "Failed", message="bad")]
    actions, status = reconcile(RUN, spec, status, observed, T0)
    assert status["phase"] == "Failed"
    assert SetJobSuspended("demo-base-eval", True) in actions
