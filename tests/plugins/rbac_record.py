"""Pytest plugin: the operator's Kubernetes API calls, recorded over the test session and compared
with the chart's RBAC rules at its end (least privilege).

The KMock emulator (`kmock_cluster.py`) reports every request here with its User-Agent; the
operator's clients (kopf, `kopf/...`, and the kubernetes client, `OpenAPI-Generator/...`) count,
the tests' own client (`TEST_USER_AGENT`) does not. At the end of the session every recorded
(API group, resource, verb) must be granted by the chart's rules (`helm template --set
watch.scope=all`); when the whole default suite ran, every granted pair must also have been used,
so a rule nobody needs fails `make test` too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEST_USER_AGENT = "evoquality-tests"
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")
_VERBS = {"CREATE": "create", "DELETE": "delete", "FETCH": "get", "LIST": "list", "WATCH": "watch"}
RECORDED: set[tuple[str, str, str]] = set()
# Granted, used by the operator's code, but only in a race no test can time: a Job the operator
# creates that exists already (409) is read (GET) to check its owner before it is adopted.
RACE_ONLY = {("batch", "jobs", "get")}


def record(user_agent: str, method: str, action: str | None, group: str, resource: str) -> None:
    """One API request as (group, resource, verb) when the operator made it."""
    if not user_agent.startswith(OPERATOR_AGENTS) or action is None:
        return
    verb = (
        {"PATCH": "patch", "PUT": "update"}.get(method)
        if action == "UPDATE"
        else _VERBS.get(action)
    )
    if verb is not None:
        RECORDED.add((group, resource, verb))


def chart_rules(helm: Path) -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) the chart grants the operator's service account."""
    rendered = subprocess.run(
        [str(helm), "template", "evoquality", str(ROOT / "charts" / "evoquality"),
         "--set", "watch.scope=all"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    operator = next(d for d in docs if d.get("kind") == "Deployment")
    account = operator["spec"]["template"]["spec"]["serviceAccountName"]
    bound = {  # the roles bound to the operator's service account (not users' aggregated roles)
        (b["roleRef"]["kind"], b["roleRef"]["name"])
        for b in docs
        if b.get("kind") in ("RoleBinding", "ClusterRoleBinding")
        and any(s.get("kind") == "ServiceAccount" and s.get("name") == account
                for s in b.get("subjects") or [])
    }  # fmt: skip
    granted = set()
    for doc in docs:
        if (
            doc.get("kind") in ("Role", "ClusterRole")
            and (doc["kind"], doc["metadata"]["name"]) in bound
        ):
            for rule in doc.get("rules") or []:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        granted |= {(group, resource, verb) for verb in rule["verbs"]}
    return granted


def _whole_suite(config) -> bool:
    """The run collected the default test paths with no selection (what `make test` runs)."""
    import pytest

    by_default = config.args_source == pytest.Config.ArgsSource.TESTPATHS or config.args in (
        [],
        [str(ROOT)],
        ["tests"],
        [str(ROOT / "tests")],
    )
    return by_default and not config.getoption("keyword") and not config.getoption("markexpr")


def pytest_sessionfinish(session, exitstatus) -> None:
    helm = ROOT / "tools" / "bin" / "helm"
    if not RECORDED or not helm.exists():
        return
    granted = chart_rules(helm)
    missing = sorted(RECORDED - granted)
    whole_suite = _whole_suite(session.config)
    unused = sorted(granted - RECORDED - RACE_ONLY) if whole_suite else []
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if missing or unused:
        session.exitstatus = 1
        if reporter is not None:
            reporter.write_line(
                f"RBAC: used but not granted by the chart: {missing}; granted but never used by "
                f"the operator in the whole suite: {unused}",
                red=True,
            )
    elif reporter is not None:
        scope = " and every rule is used" if whole_suite else ""
        reporter.write_line(f"RBAC: the operator's calls are granted{scope}: {sorted(RECORDED)}")
