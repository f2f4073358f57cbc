"""A reconcile pass still running when its run is deleted exports no metrics after the run was
forgotten (seen in a fresh-ci: the deleted run's phase series came back and stayed)."""

from __future__ import annotations

from evoquality_operator.controller import Operator, OperatorConfig

from evoquality.telemetry import RunMetrics


def phase_series(metrics: RunMetrics, run: str) -> list[dict]:
    return [
        sample.labels
        for family in metrics.registry.collect()
        if family.name == "evoquality_run_phase"
        for sample in family.samples
        if sample.labels.get("run") == run
    ]


def test_a_pass_in_flight_when_the_run_is_forgotten_exports_nothing():
    metrics = RunMetrics()
    operator = Operator(OperatorConfig(), api=None, metrics=metrics)
    in_flight = operator._state("ml", "doomed")  # the pass holds its run's state
    operator._export("ml", "doomed", {"phase": "Pending"}, in_flight)
    assert phase_series(metrics, "doomed")
    operator.forget("ml", "doomed")  # the run is deleted while the pass runs
    assert phase_series(metrics, "doomed") == []
    operator._export("ml", "doomed", {"phase": "Running"}, in_flight)  # the pass ends
    assert phase_series(metrics, "doomed") == []
    operator._export("ml", "other", {"phase": "Running"}, operator._state("ml", "other"))
    assert phase_series(metrics, "other")  # other runs still export
