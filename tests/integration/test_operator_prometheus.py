"""Prometheus scraping the operator while it drives a run: the dashboard against real series.

Debian's `prometheus` scrapes the operator's /metrics every second while kopf runs the operator
against KMock's emulator and the test plays the Job controller. The run has 2 rounds and 2
benchmarks, and the first attempt of round 0's train fails and is retried. The test holds each
train stage running until Prometheus has scraped it (the "Running stage" panel), then drives the
run to Succeeded, waits (bounded) for the final scrape and runs every dashboard panel query with
$namespace/$run set to the run: each must return the run's data, equal to the run's status, and
the panels a finished clean stage leaves empty must be empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.test_operator import (
    NS,
    RUNS_PATH,
    drive,
    run_manifest,
    stage_metrics,
    status_of,
)
from tests.plugins.dashboard import (
    METRIC_NAME,
    dashboard_targets,
    panel_expr,
    run_target,
    substitute,
    template_variables,
    values_by,
)
from tests.plugins.kmock_cluster import ClusterHandle, JobController, operator
from tests.plugins.prometheus import PrometheusServer

RUN = "demo"
JOB = "evoquality-operator-metrics"
BENCHMARKS = ("syniqa", "koniq")
FAILING_ATTEMPT = f"{RUN}-r0-train"  # its retry, -a1, succeeds
PHASES = ("Pending", "Running", "Suspended", "Queued", "Succeeded", "Failed")
ROUND_PANELS = {  # panel (title, refId) -> (stage, summary key) of status.rounds[r]
    ("Vote agreement", "A"): ("vote", "agreement"),
    ("Abstentions and ties", "A"): ("vote", "abstention_rate"),
    ("Abstentions and ties", "B"): ("vote", "tie_rate"),
    ("Abstentions and ties", "C"): ("vote", "position_bias"),
    ("Pseudo-labels", "A"): ("rank", "labels"),
    ("Train reward", "A"): ("train", "reward_mean"),
    ("Train KL", "A"): ("train", "kl"),
}


def summary(job: dict[str, Any], index: int) -> dict[str, Any]:
    """test_operator's stage metrics, with a second benchmark in the evaluations."""
    metrics = stage_metrics(job, index)
    if job["metadata"]["labels"]["evoquality.io/stage"] == "eval":
        metrics["koniq.srcc"] = metrics["syniqa.srcc"] - 0.05
        metrics["koniq.plcc"] = metrics["syniqa.plcc"] - 0.05
    return metrics


def behaviour(job: dict[str, Any]) -> tuple[str, Any]:
    if job["metadata"]["name"] == FAILING_ATTEMPT:
        return "fail", "Traceback ...\nRuntimeError: CUDA error: an illegal memory access"
    completions = int(job["spec"].get("completions") or 1)
    return "succeed", [summary(job, i) for i in range(completions)]


def stage_running(stage_id: str) -> Callable[[dict], bool]:
    return lambda st: ((st.get("stages") or {}).get(stage_id) or {}).get("state") == "Running"


def panel(prometheus: PrometheusServer, title: str, ref: str = "A") -> list[dict]:
    """An instant panel's result for the run."""
    return prometheus.query(substitute(panel_expr(title, ref), NS, RUN))


def hold_until_scraped(prometheus: PrometheusServer, status: dict, round_text: str) -> None:
    """With the run's train stage of `round_text` running (the test finishes no Job meanwhile),
    the "Running stage" panel shows exactly the run's active stages once Prometheus scraped it."""
    active = {
        (RUN, e["round"], e["stage"])
        for e in status["stages"].values()
        if e["state"] not in ("Succeeded", "Failed")
    }
    assert (RUN, round_text, "train") in active, status["stages"]
    expr = substitute(panel_expr("Running stage"), NS, RUN)
    result = prometheus.wait_for(
        expr,
        lambda r: (
            {(s["metric"]["run"], s["metric"]["round"], s["metric"]["stage"]) for s in r} == active
        ),
    )
    for sample in result:
        assert 0 <= float(sample["value"][1]) < 60  # seconds since the stage started


def eval_by_round(status: dict, metric: str) -> dict[tuple[str, str], float]:
    """(round label, benchmark) -> the status's `<benchmark>.<metric>` of every evaluation."""
    evals = {"base": status["base"]["eval"]}
    evals.update({str(r): entry["eval"] for r, entry in enumerate(status["rounds"])})
    return {
        (rnd, key.rpartition(".")[0]): value
        for rnd, metrics in evals.items()
        for key, value in metrics.items()
        if key.endswith(f".{metric}")
    }


def test_dashboard_on_prometheus_scraping_the_operator(
    cluster: ClusterHandle, prometheus_server: Callable[..., PrometheusServer]
) -> None:
    prometheus = prometheus_server(
        [{"job_name": JOB, "static_configs": [{"targets": [f"127.0.0.1:{cluster.metrics_port}"]}]}],
        scrape_interval="1s",
    )
    manifest = run_manifest(RUN)
    manifest["spec"]["evaluation"]["benchmarks"] = [
        {"name": b, "manifest": f"s3://bench/{b}.csv"} for b in BENCHMARKS
    ]
    cluster.put(RUNS_PATH, manifest)
    controller = JobController(cluster, NS, behaviour)
    with operator():
        prometheus.wait_for(f'up{{job="{JOB}"}} == 1', timeout=30)

        # round 0's train runs (its first attempt is going to fail): no failures yet
        drive(cluster, controller, RUN, until=stage_running("r0-train"))
        hold_until_scraped(prometheus, status_of(cluster, RUN), "0")
        assert panel(prometheus, "Failures and retries", "A") == []
        assert panel(prometheus, "Failures and retries", "B") == []
        assert values_by(panel(prometheus, "Current round"), "run") == {(RUN,): 0}

        # round 1's train runs, after the retried round 0
        drive(cluster, controller, RUN, until=stage_running("r1-train"))
        hold_until_scraped(prometheus, status_of(cluster, RUN), "1")

        drive(cluster, controller, RUN)
        status = status_of(cluster, RUN)
        assert status["phase"] == "Succeeded", status
        assert {FAILING_ATTEMPT, f"{FAILING_ATTEMPT}-a1"} <= set(cluster.created("jobs"))

        # bounded wait for the final values: Succeeded, and every evaluation in
        srcc = eval_by_round(status, "srcc")
        assert {b for _, b in srcc} == {*BENCHMARKS, "wavg", "validation"}
        assert len(srcc) == 3 * 4  # base, round 0, round 1
        prometheus.wait_for(
            f'evoquality_run_phase{{namespace="{NS}", run="{RUN}", phase="Succeeded"}} == 1'
        )
        prometheus.wait_for(
            f'count(evoquality_eval_srcc{{namespace="{NS}", run="{RUN}"}})',
            lambda r: bool(r) and float(r[0]["value"][1]) == len(srcc),
        )

        check_every_panel(prometheus, status)
        check_template_variables(prometheus)


def check_every_panel(prometheus: PrometheusServer, status: dict) -> None:
    durations = {
        (RUN, e["round"], e["stage"]): e["durationSeconds"] for e in status["stages"].values()
    }
    assert len(durations) == 9 and all(e["state"] == "Succeeded" for e in status["stages"].values())
    retried = {(RUN, "0", "train"): 1.0}

    def eval_checks(metric: str) -> Callable[[list[dict]], None]:
        def check(result: list[dict]) -> None:
            expected = eval_by_round(status, metric)
            assert values_by(result, "round", "benchmark") == pytest.approx(expected)

        return check

    def round_checks(stage: str, key: str) -> Callable[[list[dict]], None]:
        def check(result: list[dict]) -> None:
            expected = {(str(r),): e[stage][key] for r, e in enumerate(status["rounds"])}
            assert values_by(result, "round") == pytest.approx(expected)

        return check

    def last(result: list[dict], *labels: str) -> dict:
        """A range result's latest value per series."""
        return {
            tuple(s["metric"].get(k) for k in labels): float(s["values"][-1][1]) for s in result
        }

    def check_progress(result: list[dict]) -> None:
        (age,) = last(result, "run").values()
        assert 0 <= age < 60

    def check_rounds(result: list[dict]) -> None:
        assert last(result, "run") == {(RUN,): status["round"]}
        # over the run: round 0, then round 1 (both held while Prometheus scraped them)
        expr = substitute(panel_expr("Round over time"), NS, RUN)
        (series,) = prometheus.query_range(expr, seconds=300, step=1)
        values = [float(v) for _, v in series["values"]]
        assert values == sorted(values) and {0.0, 1.0} <= set(values), values

    def check_eval_over_time(result: list[dict]) -> None:
        expected = {(RUN, *k): v for k, v in eval_by_round(status, "srcc").items()}
        assert last(result, "run", "round", "benchmark") == pytest.approx(expected)

    checks: dict[tuple[str, str], Callable[[list[dict]], None]] = {
        ("Runs by phase", "A"): lambda r: (
            values_by(r, "phase") == {(p,): float(p == "Succeeded") for p in PHASES}
            or pytest.fail(f"runs by phase: {r}")
        ),
        ("Run phase", "A"): lambda r: (
            values_by(r, "namespace", "run", "phase") == {(NS, RUN, "Succeeded"): 1.0}
            or pytest.fail(f"run phase: {r}")
        ),
        ("Current round", "A"): lambda r: (
            values_by(r, "run") == {(RUN,): status["round"]} or pytest.fail(f"round: {r}")
        ),
        # no stage runs any more (it showed the running train stages above)
        ("Running stage", "A"): lambda r: r == [] or pytest.fail(f"running stage: {r}"),
        ("Time since last progress", "A"): check_progress,
        ("Round over time", "A"): check_rounds,
        ("Eval SRCC per benchmark across rounds", "A"): eval_checks("srcc"),
        ("Eval PLCC per benchmark across rounds", "A"): eval_checks("plcc"),
        ("Eval SRCC over time", "A"): check_eval_over_time,
        **{key: round_checks(*value) for key, value in ROUND_PANELS.items()},
        ("Stage durations", "A"): lambda r: (
            values_by(r, "run", "round", "stage") == pytest.approx(durations)
            or pytest.fail(f"durations: {r}")
        ),
        ("Stage durations over time", "A"): lambda r: (
            last(r, "run", "round", "stage") == pytest.approx(durations)
            or pytest.fail(f"durations over time: {r}")
        ),
        # one failed attempt, one retry: round 0's train; nothing else failed
        ("Failures and retries", "A"): lambda r: (
            values_by(r, "run", "round", "stage") == retried or pytest.fail(f"failures: {r}")
        ),
        ("Failures and retries", "B"): lambda r: (
            values_by(r, "run", "round", "stage") == retried or pytest.fail(f"retries: {r}")
        ),
    }
    targets = dashboard_targets()
    assert {(title, t["refId"]) for title, t in targets} == set(checks), "a panel is unchecked"
    for title, target in targets:
        result = run_target(prometheus, target, NS, RUN)
        if (title, target["refId"]) != ("Running stage", "A"):
            assert result, f"panel {title!r}: no data for {target['expr']}"
        # every series the panel shows belongs to the run
        assert all(s["metric"].get("run", RUN) == RUN for s in result), (title, result)
        checks[(title, target["refId"])](result)
    # the operator exported every series the dashboard plots
    plotted = {m for _, t in targets for m in re.findall(METRIC_NAME, t["expr"])}
    names = {m["__name__"] for m in prometheus.api("series", **{"match[]": f'{{job="{JOB}"}}'})}
    assert plotted <= names, sorted(plotted - names)


def check_template_variables(prometheus: PrometheusServer) -> None:
    variables = template_variables(NS, ".*")
    for name, expected in (("namespace", {NS}), ("run", {RUN})):
        selector, label = variables[name]
        values = set(prometheus.api(f"label/{label}/values", **{"match[]": selector}))
        assert values == expected, (name, values)
