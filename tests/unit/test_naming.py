"""Child names: deterministic, DNS-1123 labels, hash-truncated, injective."""

from __future__ import annotations

import re

from evoquality_operator import naming

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_job_names_follow_the_pattern():
    assert naming.job_name("demo", 0, "vote") == "demo-r0-vote"
    assert naming.job_name("demo", 1, "train", 2) == "demo-r1-train-a2"
    assert naming.job_name("demo", None, "eval") == "demo-base-eval"
    assert naming.spec_configmap_name("demo") == "demo-spec"


def test_unsafe_run_names_become_dns_labels_without_collisions():
    dotted = naming.job_name("qwen2.5-vl-7b", 0, "vote")
    dashed = naming.job_name("qwen2-5-vl-7b", 0, "vote")
    assert DNS_LABEL.match(dotted) and dotted != dashed
    assert dotted.startswith("qwen2-5-vl-7b-r0-vote-")
    assert naming.job_name("qwen2.5-vl-7b", 0, "vote") == dotted  # deterministic
    service = naming.train_service_name("Qwen2.5.VL", 3)
    assert DNS_LABEL.match(service) and len(service) <= 63


def test_long_names_are_hash_truncated():
    run = "a" * 200
    job = naming.job_name(run, 12, "train", 3)
    assert len(job) <= naming.MAX_JOB_NAME and DNS_LABEL.match(job)
    assert job != naming.job_name(run, 12, "train", 4)
    assert len(naming.label_value(run)) <= 63
    assert naming.run_selector(run).startswith(f"{naming.RUN_LABEL}={naming.label_value(run)},")


def test_labels():
    labels = naming.stage_labels("demo", None, "eval", 1)
    assert labels == {
        "app.kubernetes.io/managed-by": "evoquality-operator",
        "evoquality.io/run": "demo",
        "evoquality.io/round": "base",
        "evoquality.io/stage": "eval",
        "evoquality.io/attempt": "1",
    }
    assert naming.label_value("qwen2.5-vl") == "qwen2.5-vl"  # dots are fine in label values
