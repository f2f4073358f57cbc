"""The Grafana dashboard's queries, as the tests run them against a real Prometheus.

Plain helpers shared by the dashboard tests (a fed exporter, and the operator on KMock):
`dashboard_targets` lists every panel query, `substitute` fills the template variables the way
Grafana does for one namespace and run, `run_target` runs a target as its panel would (instant or
range) on a `tests.plugins.prometheus.PrometheusServer`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "evoquality" / "dashboards" / "evoquality.json"
METRIC_NAME = r"evoquality_[a-z_]+"


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_targets() -> list[tuple[str, dict]]:
    """(panel title, target) for every query of every panel, rows included."""
    out = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                out.append((panel["title"], target))
            walk(panel.get("panels", []))

    walk(dashboard()["panels"])
    return out


def substitute(expr: str, namespace: str, run: str) -> str:
    """The expression with $namespace / $run (or ${...}) replaced, as Grafana sends it."""
    expr = re.sub(r"\$\{?namespace\}?", namespace, expr)
    expr = re.sub(r"\$\{?run\}?", run, expr)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def panel_expr(title: str, ref: str = "A") -> str:
    for panel_title, target in dashboard_targets():
        if panel_title == title and target["refId"] == ref:
            return target["expr"]
    raise KeyError(title)


def run_target(prometheus: Any, target: dict, namespace: str, run: str) -> list[dict]:
    """Run a panel's target like the panel does: an instant query, or the last 30 s at 1 s."""
    expr = substitute(target["expr"], namespace, run)
    if target.get("instant"):
        return prometheus.query(expr)
    return prometheus.query_range(expr, seconds=30, step=1)


def template_variables(namespace: str, run: str) -> dict[str, tuple[str, str]]:
    """name -> (series selector, label) of every `label_values(selector, label)` variable."""
    out = {}
    for variable in dashboard()["templating"]["list"]:
        if variable.get("type") == "datasource" or not isinstance(variable.get("query"), dict):
            continue
        query = variable["query"]["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, query
        out[variable["name"]] = (substitute(match.group(1), namespace, run), match.group(2))
    return out


def values_by(result: list[dict], *labels: str) -> dict:
    """An instant vector as {(label values...): value}."""
    return {tuple(s["metric"].get(k) for k in labels): float(s["value"][1]) for s in result}
