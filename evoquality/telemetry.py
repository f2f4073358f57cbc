"""Prometheus metrics of self-evolution runs, shared by the embedded runner and the operator.

Both executors only read stage summaries; `RunMetrics.observe_summary` maps a summary's scalar
metrics onto the `evoquality_*` series, so a local run and a cluster run feed the same Grafana
dashboard. Labels: namespace, run, round, stage or benchmark.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

PHASES = ("Pending", "Running", "Suspended", "Queued", "Succeeded", "Failed")
RUN = ("namespace", "run")
ROUND = (*RUN, "round")

# stage summary metric name -> gauge name (labels namespace, run, round)
ROUND_GAUGES = {
    "vote": {
        "agreement": "evoquality_vote_agreement",
        "abstention_rate": "evoquality_vote_abstention_ratio",
        "tie_rate": "evoquality_vote_tie_ratio",
        "position_bias": "evoquality_vote_position_bias",
    },
    "rank": {"labels": "evoquality_pseudo_labels"},
    "train": {"reward_mean": "evoquality_train_reward", "kl": "evoquality_train_kl"},
}
EVAL_GAUGES = {"srcc": "evoquality_eval_srcc", "plcc": "evoquality_eval_plcc"}
HELP = {
    "evoquality_vote_agreement": "Mean majority share of the votes per pair.",
    "evoquality_vote_abstention_ratio": "Share of votes without a parseable answer.",
    "evoquality_vote_tie_ratio": "Share of pairs whose votes tie.",
    "evoquality_vote_position_bias": "Share of votes won by the first-shown image.",
    "evoquality_pseudo_labels": "Pseudo-labels kept after the confidence filter.",
    "evoquality_train_reward": "Mean fidelity reward over the round's GRPO steps.",
    "evoquality_train_kl": "Mean KL to the reference policy over the round's GRPO steps.",
    "evoquality_eval_srcc": "Spearman correlation with MOS of the round's checkpoint.",
    "evoquality_eval_plcc": "Pearson correlation with MOS of the round's checkpoint.",
}


def eval_metric_key(benchmark: str, metric: str) -> str:
    """Key of one benchmark metric in an eval summary's flat metrics (e.g. `syniqa.srcc`)."""
    return f"{benchmark}.{metric}"


def round_label(round_index: int | None) -> str:
    """The `round` label: the round number, or `base` for the base model's evaluation."""
    return "base" if round_index is None else str(round_index)


class RunMetrics:
    """The `evoquality_*` series of one process (runner or operator)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.runs = Gauge("evoquality_runs", "Runs by phase.", ("namespace", "phase"), registry=reg)
        self.phase = Gauge(
            "evoquality_run_phase", "1 for the run's current phase.", (*RUN, "phase"), registry=reg
        )
        self.round = Gauge("evoquality_run_round", "Current round of the run.", RUN, registry=reg)
        self.progress = Gauge(
            "evoquality_run_last_progress_timestamp_seconds",
            "Unix time of the run's last completed stage.",
            RUN,
            registry=reg,
        )
        self.stage_start_time = Gauge(
            "evoquality_stage_started_timestamp_seconds",
            "Unix time the running stage started (0 when none runs).",
            (*ROUND, "stage"),
            registry=reg,
        )
        self.duration = Gauge(
            "evoquality_stage_duration_seconds",
            "Wall time of the last completed stage.",
            (*ROUND, "stage"),
            registry=reg,
        )
        self.failures = Counter(
            "evoquality_stage_failures_total",
            "Failed stage attempts.",
            (*ROUND, "stage"),
            registry=reg,
        )
        self.retries = Counter(
            "evoquality_stage_retries_total",
            "Stage retries started.",
            (*ROUND, "stage"),
            registry=reg,
        )
        self.round_gauges = {
            name: Gauge(name, HELP[name], ROUND, registry=reg)
            for mapping in ROUND_GAUGES.values()
            for name in mapping.values()
        }
        self.eval_gauges = {
            metric: Gauge(name, HELP[name], (*ROUND, "benchmark"), registry=reg)
            for metric, name in EVAL_GAUGES.items()
        }
        self._phases: dict[tuple[str, str], str] = {}

    def set_phase(self, namespace: str, run: str, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        self._phases[(namespace, run)] = phase
        for candidate in PHASES:
            self.phase.labels(namespace, run, candidate).set(1.0 if candidate == phase else 0.0)
        self._recount(namespace)

    def forget_run(self, namespace: str, run: str) -> None:
        """Drop a deleted run's per-run series."""
        self._phases.pop((namespace, run), None)
        for candidate in PHASES:
            self._remove(self.phase, namespace, run, candidate)
        self._remove(self.round, namespace, run)
        self._remove(self.progress, namespace, run)
        self._recount(namespace)

    def set_round(self, namespace: str, run: str, round_index: int) -> None:
        self.round.labels(namespace, run).set(round_index)

    def stage_started(
        self, namespace: str, run: str, round_index: int | None, stage: str, at: float | None = None
    ) -> None:
        labels = (namespace, run, round_label(round_index), stage)
        self.stage_start_time.labels(*labels).set(time.time() if at is None else at)

    def stage_failed(self, namespace: str, run: str, round_index: int | None, stage: str) -> None:
        self.failures.labels(namespace, run, round_label(round_index), stage).inc()

    def stage_retried(self, namespace: str, run: str, round_index: int | None, stage: str) -> None:
        self.retries.labels(namespace, run, round_label(round_index), stage).inc()

    def observe_summary(
        self,
        namespace: str,
        run: str,
        round_index: int | None,
        stage: str,
        metrics: Mapping[str, Any],
        duration_s: float | None = None,
    ) -> None:
        """Record a committed stage's summary metrics (a merged vote summary for shards)."""
        rnd = round_label(round_index)
        labels = (namespace, run, rnd, stage)
        if duration_s is not None:
            self.duration.labels(*labels).set(duration_s)
        self.stage_start_time.labels(*labels).set(0)
        self.progress.labels(namespace, run).set(time.time())
        for key, name in ROUND_GAUGES.get(stage, {}).items():
            value = metrics.get(key)
            if isinstance(value, int | float):
                self.round_gauges[name].labels(namespace, run, rnd).set(float(value))
        if stage == "eval":
            for key, value in metrics.items():
                benchmark, _, metric = key.rpartition(".")
                if benchmark and metric in self.eval_gauges and isinstance(value, int | float):
                    self.eval_gauges[metric].labels(namespace, run, rnd, benchmark).set(value)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Serve `/metrics` over HTTP in a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)

    def _recount(self, namespace: str) -> None:
        for candidate in PHASES:
            count = sum(
                1 for (ns, _), ph in self._phases.items() if ns == namespace and ph == candidate
            )
            self.runs.labels(namespace, candidate).set(count)

    @staticmethod
    def _remove(metric: Gauge, *labels: str) -> None:
        with contextlib.suppress(KeyError):
            metric.remove(*labels)
