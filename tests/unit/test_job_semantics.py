"""The Kubernetes rules the test Job executor follows (tests/plugins/job_semantics.py)."""

from __future__ import annotations

import pytest
from evoquality_operator import jobs
from evoquality_operator.reconcile import StageKey

from evoquality.spec import parse_spec
from tests.plugins import job_semantics as ks
from tests.plugins.job_executor import Rewrites, host_names

INDEX_REF = {"fieldRef": {"fieldPath": f"metadata.annotations['{ks.COMPLETION_INDEX}']"}}
POD = {"metadata": {"name": "p", "namespace": "ml", "annotations": {ks.COMPLETION_INDEX: "3"}}}


def test_expand_like_kubernetes():
    env = {"A": "1", "B": "two"}
    assert ks.expand("$(A)-$(B)", env) == "1-two"
    assert ks.expand("$(MISSING) $$(A) $$", env) == "$(MISSING) $(A) $"
    assert ks.expand("--node-rank=$(A)", env) == "--node-rank=1"


def test_container_env_order_and_references():
    objects = {("Secret", "s3"): {"KEY": "k", "SHARED": "secret"}, ("ConfigMap", "cm"): {"x": "y"}}
    container = {
        "envFrom": [{"secretRef": {"name": "s3"}}],
        "env": [
            {"name": "SHARED", "value": "env wins"},
            {"name": "RANK", "valueFrom": INDEX_REF},
            {"name": "ADDR", "value": "node-$(RANK):$(PORT)"},  # PORT is defined later
            {"name": "PORT", "value": "29500"},
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "x"}}},
            {
                "name": "GONE",
                "valueFrom": {"secretKeyRef": {"name": "no", "key": "k", "optional": True}},
            },
        ],
    }
    env = ks.container_env(container, POD, lambda kind, name: objects.get((kind, name)))
    assert env == {
        "KEY": "k",
        "SHARED": "env wins",
        "RANK": "3",
        "ADDR": "node-3:$(PORT)",
        "PORT": "29500",
        "X": "y",
    }
    with pytest.raises(ks.ConfigError, match='secret "s3" not found'):
        ks.container_env(container, POD, lambda kind, name: None)


def test_failure_policy_first_matching_rule():
    policy = jobs.vote_failure_policy(4)["podFailurePolicy"]
    assert ks.failure_action(policy, ks.PodExit(2, "stage")) == ks.FAIL_INDEX
    assert ks.failure_action(policy, ks.PodExit(1, "stage")) == ks.COUNT
    assert ks.failure_action(policy, ks.PodExit(137, "stage")) == ks.COUNT
    evicted = ks.PodExit(2, "stage", frozenset({"DisruptionTarget"}))
    assert ks.failure_action(policy, evicted) == ks.IGNORE
    not_in = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [1]}}]}
    assert ks.failure_action(not_in, ks.PodExit(3)) == ks.FAIL_JOB
    assert ks.failure_action(not_in, ks.PodExit(1)) == ks.COUNT


def vote_tracker(shards: int, parallelism: int | None = None) -> ks.JobTracker:
    job = {
        "spec": {
            "completionMode": "Indexed",
            "completions": shards,
            "parallelism": parallelism or shards,
            **jobs.vote_failure_policy(shards),
        }
    }
    return ks.JobTracker.from_job(job)


def start_all(tracker: ks.JobTracker) -> list[int]:
    started = tracker.to_start()
    for index in started:
        tracker.started(index)
    return started


def test_a_failed_shard_is_retried_alone():
    tracker = vote_tracker(3)
    assert start_all(tracker) == [0, 1, 2]
    tracker.pod_failed(1, ks.PodExit(137, "stage"))
    assert start_all(tracker) == [1]  # only index 1 gets a new pod; 0 and 2 keep running
    for index in (0, 2, 1):
        tracker.pod_succeeded(index)
    assert tracker.verdict == ("Complete", "CompletionsReached", "Reached the expected completions")
    assert tracker.status() == {
        "active": 0,
        "succeeded": 3,
        "failed": 1,
        "completedIndexes": "0-2",
        "failedIndexes": "",
    }


def test_failed_indexes_let_the_others_finish_then_fail_the_job():
    tracker = vote_tracker(4, parallelism=2)
    start_all(tracker)
    tracker.pod_failed(0, ks.PodExit(2, "stage"))  # FailIndex: no retry
    assert start_all(tracker) == [2]
    tracker.pod_failed(1, ks.PodExit(1, "stage"))  # counted: one retry left for index 1
    assert start_all(tracker) == [1]
    tracker.pod_failed(1, ks.PodExit(1, "stage"))
    assert tracker.failed_indexes == {0, 1} and not tracker.finished  # 2 of 4 = maxFailedIndexes
    assert start_all(tracker) == [3]
    tracker.pod_succeeded(2)
    tracker.pod_succeeded(3)
    assert tracker.verdict is not None and tracker.verdict[:2] == ("Failed", "FailedIndexes")
    assert tracker.status()["failedIndexes"] == "0-1"


def test_more_failed_indexes_than_allowed_fail_the_job_at_once():
    tracker = vote_tracker(2)
    start_all(tracker)
    tracker.pod_failed(0, ks.PodExit(2, "stage"))
    assert not tracker.finished  # maxFailedIndexes 1
    tracker.pod_failed(1, ks.PodExit(2, "stage"))
    assert tracker.verdict is not None and tracker.verdict[1] == "MaxFailedIndexesExceeded"


def test_backoff_limit_zero_fails_a_gang_at_the_first_failure():
    spec = parse_spec(
        {
            "data": {"manifest": "s3://b/p.csv"},
            "storage": {"uri": "s3://b/r"},
            "training": {"nodes": 2, "gpusPerNode": 1},
        }
    )
    ctx = jobs.RunContext("ml", "demo", "uid", spec)
    job = jobs.stage_job(ctx, StageKey(0, "train"), 0, suspend=False)
    tracker = ks.JobTracker.from_job(job)
    assert start_all(tracker) == [0, 1]
    tracker.pod_failed(1, ks.PodExit(137, "stage"))
    assert tracker.verdict is not None and tracker.verdict[1] == "BackoffLimitExceeded"
    assert tracker.to_start() == [] and tracker.active == {0}  # the caller terminates index 0


def test_non_indexed_job_completes_with_one_pod():
    tracker = ks.JobTracker.from_job({"spec": {"backoffLimit": 0, "template": {}}})
    assert start_all(tracker) == [0]
    assert tracker.to_start() == []
    tracker.pod_succeeded(0)
    assert tracker.verdict is not None and tracker.verdict[0] == "Complete"
    assert "completedIndexes" not in tracker.status()


def test_compress_indexes():
    assert ks.compress_indexes([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert ks.compress_indexes([]) == ""


def test_rewrites_paths_hosts_and_ports():
    hosts = host_names("demo-r0-train", 2, "demo-r0-train", "ml")
    rewrite = Rewrites(
        mounts=(("/etc/evoquality", "/tmp/p/spec"), ("/models", "/tmp/pvc")),
        hosts=hosts,
        ports={"29500": "40001"},
    )
    assert rewrite("/etc/evoquality/spec.json") == "/tmp/p/spec/spec.json"
    assert rewrite("--spec=/etc/evoquality/spec.json") == "--spec=/tmp/p/spec/spec.json"
    assert rewrite("/models") == "/tmp/pvc" and rewrite("/modelsx") == "/modelsx"
    assert rewrite("demo-r0-train-0.demo-r0-train") == "127.0.0.1"
    assert rewrite("demo-r0-train-1.demo-r0-train.ml.svc.cluster.local:29500") == "127.0.0.1:40001"
    assert rewrite("29500") == "40001" and rewrite("129500") == "129500"
    assert rewrite("s3://bucket/models/x") == "s3://bucket/models/x"
