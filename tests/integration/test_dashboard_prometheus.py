"""The Grafana dashboard and the alerts against a real Prometheus (Debian's package).

A `RunMetrics` exporter (the one the operator and the runner serve) is fed through its public
methods: a 2-round run that succeeds after one retried train attempt, a run that fails, and one
run stuck in each stage. Prometheus scrapes it every second and evaluates the chart's rules. Then
every dashboard panel query (template variables substituted) and every alert expression runs
against Prometheus's HTTP API and must return the data the runs produced; the rule file passes
`promtool check rules` and the unit tests in data/alerts_test.yaml (`promtool test rules`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from evoquality.telemetry import RunMetrics
from tests.plugins.dashboard import (
    METRIC_NAME,
    dashboard_targets,
    panel_expr,
    run_target,
    substitute,
    template_variables,
    values_by,
)
from tests.plugins.prometheus import free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "evoquality"
ALERTS_TEST = Path(__file__).parent / "data" / "alerts_test.yaml"
MONITORING = "monitoring.coreos.com/v1"
JOB = "evoquality-operator-metrics"  # the metrics Service of release "evoquality"
NS = "team-a"
OK, FAILED = "evo-ok", "evo-failed"
STAGES = ("vote", "rank", "train", "eval")
BENCHMARKS = ("syniqa", "koniq-mini")
STUCK_FOR_S = 3 * 86400  # longer than every default stage deadline


def stuck(stage: str) -> str:
    return f"stuck-{stage}"


# ------------------------------------------------------------------------------------------
# rules from the chart
# ------------------------------------------------------------------------------------------


def rendered_rules(helm, *set_json: str) -> dict:
    """The PrometheusRule's spec (a Prometheus rule file) from `helm template`."""
    extra = ["--show-only", "templates/prometheusrule.yaml"]
    for item in set_json:
        extra += ["--set-json", item]
    out = helm.template(
        sets=["prometheusRule.enabled=true"], api_versions=[MONITORING], extra=extra
    ).stdout
    (rule,) = [d for d in yaml.safe_load_all(out) if d]
    assert rule["kind"] == "PrometheusRule"
    return rule["spec"]


def write_rules(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_promtool_check_and_unit_test_rules(helm, promtool_bin: str, tmp_path: Path) -> None:
    write_rules(tmp_path / "rules.yaml", rendered_rules(helm))
    shutil.copy(ALERTS_TEST, tmp_path / "alerts_test.yaml")
    check = subprocess.run(
        [promtool_bin, "check", "rules", "rules.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout
    unit = subprocess.run(
        [promtool_bin, "test", "rules", "alerts_test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


# ------------------------------------------------------------------------------------------
# a live exporter scraped by Prometheus
# ------------------------------------------------------------------------------------------


def start_stage(metrics: RunMetrics, ns, run, round_index, stage, at=None) -> None:
    # Through the class: in evoquality/telemetry.py the instance attribute `stage_started` (the
    # Gauge) shadows the method of the same name, so `metrics.stage_started(...)` raises TypeError.
    metrics.stage_started(ns, run, round_index, stage, at=at)


def feed(metrics: RunMetrics) -> None:
    """The series of a few runs, through RunMetrics' public methods only."""
    # A 2-round run: base eval, then vote/rank/train/eval per round; round 0's train fails once.
    metrics.set_phase(NS, OK, "Pending")
    metrics.set_phase(NS, OK, "Running")
    metrics.set_round(NS, OK, 0)
    start_stage(metrics, NS, OK, None, "eval")
    base = {f"{b}.{m}": 0.30 + 0.01 * i for i, b in enumerate(BENCHMARKS) for m in ("srcc", "plcc")}
    metrics.observe_summary(NS, OK, None, "eval", base, duration_s=40.0)
    for r in (0, 1):
        metrics.set_round(NS, OK, r)
        summaries = {
            "vote": {
                "agreement": 0.70 + 0.05 * r,
                "abstention_rate": 0.04,
                "tie_rate": 0.10 - 0.02 * r,
                "position_bias": 0.53,
                "pairs": 200,
            },
            "rank": {"labels": 180 + 10 * r},
            "train": {"reward_mean": 0.60 + 0.05 * r, "kl": 0.010 + 0.002 * r, "steps": 20},
            "eval": {
                f"{b}.{m}": 0.50 + 0.10 * r + 0.01 * i
                for i, b in enumerate(BENCHMARKS)
                for m in ("srcc", "plcc")
            },
        }
        for stage, summary in summaries.items():
            start_stage(metrics, NS, OK, r, stage)
            if r == 0 and stage == "train":
                metrics.stage_failed(NS, OK, r, stage)
                metrics.stage_retried(NS, OK, r, stage)
                start_stage(metrics, NS, OK, r, stage)
            metrics.observe_summary(NS, OK, r, stage, summary, duration_s=60.0 * (1 + r))
    metrics.set_phase(NS, OK, "Succeeded")

    # A run whose rank stage fails three times (two retries), then the run fails.
    metrics.set_phase(NS, FAILED, "Running")
    metrics.set_round(NS, FAILED, 0)
    start_stage(metrics, NS, FAILED, 0, "vote")
    metrics.observe_summary(NS, FAILED, 0, "vote", {"agreement": 0.6}, duration_s=30.0)
    for attempt in range(3):
        start_stage(metrics, NS, FAILED, 0, "rank")
        metrics.stage_failed(NS, FAILED, 0, "rank")
        if attempt < 2:
            metrics.stage_retried(NS, FAILED, 0, "rank")
    start_stage(metrics, NS, FAILED, 0, "rank", at=0)  # no stage runs any more
    metrics.set_phase(NS, FAILED, "Failed")

    # One Running run stuck in each stage (round 1, after a complete round 0).
    long_ago = time.time() - STUCK_FOR_S
    for stage in STAGES:
        name = stuck(stage)
        metrics.set_phase(NS, name, "Running")
        metrics.set_round(NS, name, 1)
        for done in STAGES:
            start_stage(metrics, NS, name, 0, done)
            metrics.observe_summary(NS, name, 0, done, {}, duration_s=10.0)
        start_stage(metrics, NS, name, 1, stage, at=long_ago)


@pytest.fixture(scope="module")
def exporter() -> str:
    metrics = RunMetrics()
    feed(metrics)
    port = free_port()
    metrics.serve(port)  # a daemon thread; it ends with the test process
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def prometheus(helm, prometheus_server, exporter: str, tmp_path_factory: pytest.TempPathFactory):
    # NoProgress after ~1 s instead of hours, so the alert fires during the test.
    rules = write_rules(
        tmp_path_factory.mktemp("rules") / "rules.yaml",
        rendered_rules(helm, "prometheusRule.noProgressHours=0.0003"),
    )
    server = prometheus_server(
        [{"job_name": JOB, "static_configs": [{"targets": [exporter]}]}], rule_files=[rules]
    )
    # Bounded wait until a full scrape is in: 3 eval rounds x 2 benchmarks of the 2-round run.
    server.wait_for(
        f'count(evoquality_eval_srcc{{namespace="{NS}", run="{OK}"}})',
        lambda r: bool(r) and float(r[0]["value"][1]) == 3 * len(BENCHMARKS),
    )
    return server


# ------------------------------------------------------------------------------------------
# dashboard
# ------------------------------------------------------------------------------------------


# Series only a running stage produces: shown for a stuck run; everything else for the 2-round run.
RUN_FOR_METRIC = {"evoquality_stage_started_timestamp_seconds": stuck("vote")}


def run_for(expr: str) -> str:
    return next((run for m, run in RUN_FOR_METRIC.items() if m in expr), OK)


def test_every_dashboard_query_returns_data(prometheus) -> None:
    targets = dashboard_targets()
    assert len(targets) >= 15
    metrics_used = set()
    for title, target in targets:
        metrics_used.update(re.findall(METRIC_NAME, target["expr"]))
        for run in (run_for(target["expr"]), ".*"):
            result = run_target(prometheus, target, NS, run)
            assert result, f"panel {title!r} ({run}): no data for {target['expr']}"
    # The dashboard plots every series the exporter defines.
    exported = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in RunMetrics().registry.collect()
    }
    assert len(exported) >= 17
    missing = exported - metrics_used
    assert not missing, f"the dashboard does not plot {sorted(missing)}"


def test_dashboard_panels_show_the_runs(prometheus) -> None:
    q = prometheus.query
    phases = values_by(q(substitute(panel_expr("Runs by phase"), NS, ".*")), "phase")
    assert phases[("Succeeded",)] == 1 and phases[("Failed",)] == 1
    assert phases[("Running",)] == len(STAGES) and phases[("Pending",)] == 0

    # The self-evolution curve: base -> round 0 -> round 1 per benchmark, rising.
    srcc = values_by(
        q(substitute(panel_expr("Eval SRCC per benchmark across rounds"), NS, OK)),
        "round",
        "benchmark",
    )
    assert set(srcc) == {(r, b) for r in ("base", "0", "1") for b in BENCHMARKS}
    for b in BENCHMARKS:
        assert srcc[("base", b)] < srcc[("0", b)] < srcc[("1", b)]
    plcc = q(substitute(panel_expr("Eval PLCC per benchmark across rounds"), NS, OK))
    assert len(plcc) == 3 * len(BENCHMARKS)

    agreement = values_by(q(substitute(panel_expr("Vote agreement"), NS, OK)), "round")
    assert agreement == pytest.approx({("0",): 0.70, ("1",): 0.75})
    labels = values_by(q(substitute(panel_expr("Pseudo-labels"), NS, OK)), "round")
    assert labels == {("0",): 180.0, ("1",): 190.0}
    ties = values_by(q(substitute(panel_expr("Abstentions and ties", "B"), NS, OK)), "round")
    assert ties == pytest.approx({("0",): 0.10, ("1",): 0.08})
    kl = values_by(q(substitute(panel_expr("Train KL"), NS, OK)), "round")
    assert kl == pytest.approx({("0",): 0.010, ("1",): 0.012})

    failures = values_by(
        q(substitute(panel_expr("Failures and retries", "A"), NS, ".*")), "run", "round", "stage"
    )
    retries = values_by(
        q(substitute(panel_expr("Failures and retries", "B"), NS, ".*")), "run", "round", "stage"
    )
    assert failures[(OK, "0", "train")] == 1 and retries[(OK, "0", "train")] == 1
    assert failures[(FAILED, "0", "rank")] == 3 and retries[(FAILED, "0", "rank")] == 2

    durations = values_by(q(substitute(panel_expr("Stage durations"), NS, OK)), "round", "stage")
    assert durations[("1", "train")] == 120.0 and durations[("base", "eval")] == 40.0

    running = q(substitute(panel_expr("Running stage"), NS, ".*"))
    assert {(s["metric"]["run"], s["metric"]["stage"]) for s in running} == {
        (stuck(stage), stage) for stage in STAGES
    }
    assert all(float(s["value"][1]) >= STUCK_FOR_S for s in running)
    rounds = values_by(q(substitute(panel_expr("Current round"), NS, ".*")), "run")
    assert rounds[(OK,)] == 1


def test_template_variables_list_namespaces_and_runs(prometheus) -> None:
    variables = template_variables(".*", ".*")
    for name, expected in (("namespace", {NS}), ("run", {OK, FAILED, *map(stuck, STAGES)})):
        selector, label = variables[name]
        values = set(prometheus.api(f"label/{label}/values", **{"match[]": selector}))
        assert expected <= values, (name, values)


# ------------------------------------------------------------------------------------------
# alerts
# ------------------------------------------------------------------------------------------


def alert_rules(helm) -> list[dict]:
    spec = rendered_rules(helm, "prometheusRule.noProgressHours=0.0003")
    return [r for g in spec["groups"] for r in g["rules"]]


def test_every_alert_expression_returns_data(helm, prometheus) -> None:
    seen = set()
    for rule in alert_rules(helm):
        name, expr = rule["alert"], rule["expr"]
        if name == "EvoQualityOperatorDown":
            # The exporter is up: nothing; a job with no target: the alert's series.
            assert prometheus.query(expr) == []
            missing = prometheus.query(expr.replace(JOB, "no-such-job"))
            assert len(missing) == 1
        elif name == "EvoQualityRunFailed":
            result = prometheus.query(expr)
            assert {(s["metric"]["namespace"], s["metric"]["run"]) for s in result} == {
                (NS, FAILED)
            }
        elif name == "EvoQualityStageStuck":
            stage = rule["labels"]["stage"]
            result = prometheus.query(expr)
            assert {(s["metric"]["run"], s["metric"]["round"]) for s in result} == {
                (stuck(stage), "1")
            }, expr
        elif name == "EvoQualityRunNoProgress":
            result = prometheus.wait_for(expr, lambda r: len(r) == len(STAGES), timeout=20)
            assert {s["metric"]["run"] for s in result} == set(map(stuck, STAGES))
        else:
            raise AssertionError(f"untested alert {name}")
        seen.add(name)
    assert seen == {
        "EvoQualityRunFailed",
        "EvoQualityStageStuck",
        "EvoQualityRunNoProgress",
        "EvoQualityOperatorDown",
    }


def test_prometheus_loads_the_rules_and_fires(prometheus) -> None:
    groups = prometheus.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 7 and all(r["health"] in ("ok", "unknown") for r in rules), rules
    deadline = time.monotonic() + 20
    firing: set[tuple[str, str]] = set()
    while time.monotonic() < deadline:
        firing = {
            (a["labels"]["alertname"], a["labels"].get("run", ""))
            for a in prometheus.api("alerts")["alerts"]
            if a["state"] == "firing"
        }
        if ("EvoQualityRunFailed", FAILED) in firing and len(firing) >= 2 + len(STAGES):
            break
        time.sleep(0.5)
    assert ("EvoQualityRunFailed", FAILED) in firing, firing
    assert {("EvoQualityStageStuck", stuck(s)) for s in STAGES} <= firing
    assert not {a for a in firing if a[1] == OK}, "the succeeded run raised an alert"
    assert "EvoQualityOperatorDown" not in {a[0] for a in firing}
