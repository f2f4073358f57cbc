"""Pytest plugin: a KMock Kubernetes emulator on 127.0.0.1 that behaves enough like an API server
for kopf and the operator, plus a stand-in Job controller.

KMock 0.8 stores objects exactly as posted; `ClusterEmulator` fills what an API server adds
(uid, namespace, resourceVersion bumped on every write, apiVersion/kind, creationTimestamp,
generateName), returns typed lists with a resourceVersion, and honours label and field selectors
on lists and watches. Owner references are recorded but never cascade (no garbage collector).

The emulator runs on its own event loop in a thread, so tests are plain functions and talk to it
over real HTTP like the operator does (`ClusterHandle.api`). Fixtures:

- `kube_cluster`: the running emulator (resources declared, the EvoQualityRun CRD installed) and a
  kubeconfig pointing at it, exported as KUBECONFIG for the test.
- `cluster`: `kube_cluster` set up for the operator: the CRD installed, the operator's metrics
  server on a free 127.0.0.1 port (`ClusterHandle.metrics_port`), a voter image; `operator()` runs
  kopf with the operator's handlers for a `with` block.

`JobController` plays the Job controller: starts Jobs, then completes or fails them and writes pods
with termination messages (`JobController.tick`), without running anything; `job_executor.py`
runs the Jobs' containers for real instead. `ClusterHandle.add_listener` wakes such a controller
on every write to the API; `wait_for` polls with a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import jsonpatch
import kmock
import pytest
import yaml
from evoquality_operator.k8s import Api, make_api_client
from kmock import action as kaction
from kopf.testing import KopfRunner

from evoquality.crd import build_crd
from tests.plugins import rbac_record

# plural path -> (kind, namespaced)
RESOURCES: dict[str, tuple[str, bool]] = {
    "evoquality.io/v1alpha1/evoqualityruns": ("EvoQualityRun", True),
    "batch/v1/jobs": ("Job", True),
    "v1/pods": ("Pod", True),
    "v1/configmaps": ("ConfigMap", True),
    "v1/secrets": ("Secret", True),
    "v1/services": ("Service", True),
    "v1/events": ("Event", True),
    "v1/namespaces": ("Namespace", False),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False),
    "coordination.k8s.io/v1/leases": ("Lease", True),
}
SUBRESOURCES = {"evoquality.io/v1alpha1/evoqualityruns": {"status"}, "batch/v1/jobs": {"status"}}
REQUEST_LOG = 16
VERBS = {"create", "delete", "get", "list", "patch", "update", "watch"}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_version(resource: Any) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else resource.version


def _parse_selector(text: str) -> list[tuple[str, str, set[str]]]:
    """Kubernetes label selector: =, ==, !=, in (...), notin (...), key, !key."""
    rules: list[tuple[str, str, set[str]]] = []
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if " notin " in part or " in " in part:
            op = "notin" if " notin " in part else "in"
            key, values = part.split(f" {op} ", 1)
            rules.append((key.strip(), op, {v.strip() for v in values.strip("() ").split(",")}))
        elif "!=" in part:
            key, value = part.split("!=", 1)
            rules.append((key.strip(), "!=", {value.strip()}))
        elif "=" in part:
            key, value = part.replace("==", "=").split("=", 1)
            rules.append((key.strip(), "=", {value.strip()}))
        elif part.startswith("!"):
            rules.append((part[1:].strip(), "!exists", set()))
        else:
            rules.append((part, "exists", set()))
    return rules


def _match_labels(labels: dict[str, str], selector: str) -> bool:
    for key, op, values in _parse_selector(selector):
        present = key in labels
        value = labels.get(key)
        if (
            (op == "=" and value not in values)
            or (op == "!=" and value in values)
            or (op == "in" and value not in values)
            or (op == "notin" and present and value in values)
            or (op == "exists" and not present)
            or (op == "!exists" and present)
        ):
            return False
    return True


def _match_fields(obj: dict[str, Any], selector: str) -> bool:
    for part in filter(None, (p.strip() for p in selector.split(","))):
        negate = "!=" in part
        path, value = part.replace("==", "=").split("!=" if negate else "=", 1)
        node: Any = obj
        for segment in path.split("."):
            node = node.get(segment) if isinstance(node, dict) else None
        if (str(node) == value) == negate:
            return False
    return True


def matches(obj: dict[str, Any], params: dict[str, str]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if params.get("labelSelector") and not _match_labels(labels, params["labelSelector"]):
        return False
    return not (params.get("fieldSelector") and not _match_fields(obj, params["fieldSelector"]))


@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """KubernetesEmulator that fills server-side fields and filters by selectors."""

    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_version: int = attrs.field(default=0, init=False)
    created: list[tuple[str, str | None, str]] = attrs.field(factory=list, init=False)
    conflicts: list[tuple[str, str | None, str]] = attrs.field(factory=list, init=False)
    created_at: list[tuple[str, str | None, str, float]] = attrs.field(factory=list, init=False)
    # (resource plural, query parameters) of every list and watch request the operator made
    operator_reads: list[tuple[str, dict[str, str]]] = attrs.field(factory=list, init=False)
    # (resource plural, HTTP method, object name) of every write the operator made
    operator_writes: list[tuple[str, str, str | None]] = attrs.field(factory=list, init=False)
    # admission(plural, object) -> None, or (status, reason, message) to refuse a create as a
    # quota, a webhook or validation would (the API server's 4xx with a Status body)
    admission: Callable[[str, dict[str, Any]], tuple[int, str, str] | None] | None = None
    # called (on the emulator's loop) after every successful write: the test's controllers wake
    listeners: list[Callable[[], None]] = attrs.field(factory=list, init=False)

    def _next_version(self) -> str:
        self._last_version = next(self._versions)
        return str(self._last_version)

    def _info(self, resource: Any) -> tuple[str, bool]:
        key = f"{_api_version(resource)}/{resource.plural}"
        return RESOURCES.get(key, (str(resource.plural).capitalize(), True))

    async def _handle(self, request: kmock.Request):  # type: ignore[override]
        # KMock matches every request against its whole request log (quadratic over a test);
        # keep only the recent requests, the tests assert on objects, not on the log.
        if len(self._requests) > REQUEST_LOG:
            del self._requests[:-REQUEST_LOG]
        data = request.data
        resource = request.resource
        if resource is not None and resource.plural:  # discovery (no plural) needs no rule
            sub = f"/{request.subresource}" if request.subresource else ""
            agent = request.headers.get("User-Agent", "")
            action = request.action.name if request.action is not None else None
            if agent.startswith(rbac_record.OPERATOR_AGENTS):
                if action in ("LIST", "WATCH"):
                    self.operator_reads.append((str(resource.plural), dict(request.params or {})))
                elif action in ("CREATE", "UPDATE", "DELETE"):
                    plural = f"{resource.plural}{sub}"
                    self.operator_writes.append((plural, request.method, request.name))
            rbac_record.record(
                agent, request.method, action, resource.group or "", f"{resource.plural}{sub}"
            )
        if resource is not None and request.action == kaction.CREATE and isinstance(data, dict):
            kind, namespaced = self._info(resource)
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            if namespaced and request.namespace:
                meta["namespace"] = request.namespace
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = self._next_version()
            meta.setdefault("creationTimestamp", now_iso())
            meta.setdefault("generation", 1)
            data["apiVersion"] = _api_version(resource)
            data["kind"] = kind
        elif resource is not None and request.action == kaction.UPDATE:
            if isinstance(data, dict):
                data.setdefault("metadata", {})["resourceVersion"] = self._next_version()
            elif isinstance(data, list):
                data.append(
                    {
                        "op": "add",
                        "path": "/metadata/resourceVersion",
                        "value": self._next_version(),
                    }
                )
        creating = resource is not None and request.action == kaction.CREATE
        where = None
        if creating and isinstance(data, dict):
            meta = data.get("metadata") or {}
            where = (str(resource.plural), meta.get("namespace"), meta.get("name"))
            refusal = self.admission(str(resource.plural), data) if self.admission else None
            if refusal is not None:
                self.conflicts.append(where)
                code, reason, message = refusal
                raise kmock.KubernetesError(status=code, reason=reason, message=message)
        try:
            response = await super()._handle(request)
        except kmock.KubernetesError:
            if where is not None:
                self.conflicts.append(where)
            raise
        except jsonpatch.JsonPatchTestFailed as exc:  # as the API server: 422, not 500
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from None
        if where is not None:
            (self.created if response.status < 400 else self.conflicts).append(where)
            if response.status < 400:
                self.created_at.append((*where, time.monotonic()))
        writes = (kaction.CREATE, kaction.UPDATE, kaction.DELETE)
        if resource is not None and request.action in writes and response.status < 400:
            for listener in list(self.listeners):
                listener()
        return response

    async def _serve_list(self, request: kmock.Request) -> Any:
        payload = await super()._serve_list(request)
        kind, _ = self._info(request.resource)
        params = dict(request.params or {})
        return {
            "apiVersion": _api_version(request.resource),
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": str(self._last_version)},
            "items": [item for item in payload["items"] if matches(item, params)],
        }

    async def _serve_watch(self, request: kmock.Request):  # type: ignore[override]
        params = dict(request.params or {})
        since = (
            int(params.get("resourceVersion") or 0)
            if str(params.get("resourceVersion") or "").isdigit()
            else 0
        )
        async for event in super()._serve_watch(request):
            if isinstance(event, dict):
                obj = event.get("object") or {}
                if not matches(obj, params):
                    continue
                # a watch from a list's resourceVersion does not replay what the list returned
                version = str((obj.get("metadata") or {}).get("resourceVersion") or "0")
                if event.get("type") != "DELETED" and version.isdigit() and int(version) <= since:
                    continue
            yield event


@dataclass
class ClusterHandle:
    """The emulator running in its own thread, and an HTTP client for the test."""

    url: str = ""
    kubeconfig: Path | None = None
    metrics_port: int | None = None  # the operator's, set by the `cluster` fixture
    emulator: ClusterEmulator | None = None
    loop: asyncio.AbstractEventLoop | None = None
    _api: Api | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None

    def start(self, directory: Path) -> None:
        self._thread = threading.Thread(target=self._serve, name="kmock", daemon=True)
        self._thread.start()
        if not self._ready.wait(20) or self._error is not None:
            raise RuntimeError(f"the KMock emulator did not start: {self._error!r}")
        self.kubeconfig = directory / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig(self.url)))

    def _serve(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with ClusterEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as srv:
            for path, (kind, namespaced) in RESOURCES.items():
                emulator.resources[path] = kmock.ResourceInfo(
                    kind=kind,
                    namespaced=namespaced,
                    singular=kind.lower(),
                    verbs=VERBS,
                    subresources=SUBRESOURCES.get(path, set()),
                )
            self.emulator = emulator
            self.url = str(srv.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._api is not None:
            self._api.close()
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(20)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the emulator's loop (a consistent view of its memory)."""
        assert self.loop is not None

        async def wrapper() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    @property
    def api(self) -> Api:
        """A client over real HTTP with the kubeconfig (KUBECONFIG must point at it)."""
        if self._api is None:
            client = make_api_client()
            client.user_agent = rbac_record.TEST_USER_AGENT  # not the operator's calls
            self._api = Api(client)
        return self._api

    def created(self, plural: str) -> list[str]:
        assert self.emulator is not None
        return self.call(lambda: [n for p, _, n in self.emulator.created if p == plural])

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` (thread-safe, quick) after every successful write to the API."""
        assert self.emulator is not None
        self.call(lambda: self.emulator.listeners.append(listener))

    def remove_listener(self, listener: Callable[[], None]) -> None:
        assert self.emulator is not None
        self.call(lambda: self.emulator.listeners.remove(listener))

    def conflicts(self) -> list[tuple[str, str | None, str]]:
        assert self.emulator is not None
        return self.call(lambda: list(self.emulator.conflicts))

    def operator_reads(self, plural: str) -> list[dict[str, str]]:
        """Query parameters of the operator's list and watch requests of ``plural``."""
        assert self.emulator is not None
        return self.call(lambda: [p for r, p in self.emulator.operator_reads if r == plural])

    def operator_writes(self, plural: str) -> list[tuple[str, str | None]]:
        """(HTTP method, name) of the operator's writes to ``plural`` (e.g. ``jobs``)."""
        assert self.emulator is not None
        return self.call(
            lambda: [(m, n) for r, m, n in self.emulator.operator_writes if r == plural]
        )

    def set_admission(
        self, admission: Callable[[str, dict[str, Any]], tuple[int, str, str] | None] | None
    ) -> None:
        """Refuse creates as `admission(plural, object)` says (see `ClusterEmulator`)."""
        assert self.emulator is not None
        self.call(lambda: setattr(self.emulator, "admission", admission))

    def events(self, namespace: str, involved: str) -> list[dict[str, Any]]:
        """The Events about the object named ``involved``."""
        return self.api.list("v1", "Event", namespace, "", f"involvedObject.name={involved}")

    def put(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        """POST an object (path: the collection URL)."""
        return self.api.request("POST", path, body=obj)

    def install_crd(self, revision: str | None = None) -> None:
        crd = build_crd()
        if revision is not None:
            crd["metadata"]["annotations"]["evoquality.io/schema-revision"] = revision
        self.put("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)

    def create_namespace(self, name: str) -> None:
        self.put(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
        )


def kubeconfig(url: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test"}}],
        "current-context": "kmock",
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def kube_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ClusterHandle]:
    handle = ClusterHandle()
    handle.start(tmp_path)
    monkeypatch.setenv("KUBECONFIG", str(handle.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture()
def cluster(kube_cluster: ClusterHandle, monkeypatch: pytest.MonkeyPatch) -> ClusterHandle:
    """The emulator with the CRD installed, and the operator's environment (metrics, images)."""
    kube_cluster.install_crd()
    kube_cluster.metrics_port = free_port()
    monkeypatch.setenv("EVOQUALITY_METRICS_PORT", str(kube_cluster.metrics_port))
    monkeypatch.setenv("EVOQUALITY_METRICS_ADDR", "127.0.0.1")
    monkeypatch.setenv("EVOQUALITY_VOTER_IMAGE", "registry.local/voter:1")
    return kube_cluster


@contextmanager
def operator() -> Iterator[KopfRunner]:
    """The operator (kopf, all namespaces) running in a thread for the `with` block."""
    args = ["run", "--standalone", "-A", "-m", "evoquality_operator.handlers"]
    with KopfRunner(args, timeout=30) as runner:
        yield runner


# ---------------------------------------------------------------------------------------------
# the Job controller played by the test
# ---------------------------------------------------------------------------------------------

# behaviour(job) -> None (keep running), ("succeed", [summary per index]) or ("fail", message)
Behaviour = Callable[[dict[str, Any]], tuple[str, Any] | None]


def stage_summary(job: dict[str, Any], index: int, metrics: dict[str, Any]) -> dict[str, Any]:
    labels = job["metadata"]["labels"]
    completions = job["spec"].get("completions")
    indexed = job["spec"].get("completionMode") == "Indexed"
    round_text = labels["evoquality.io/round"]
    return {
        "stage": labels["evoquality.io/stage"],
        "round": round_text if round_text == "base" else int(round_text),
        "shard": index if indexed else None,
        "numShards": completions if indexed else None,
        "attempt": job["metadata"]["name"],
        "metrics": metrics,
    }


@dataclass
class JobController:
    """Starts every unsuspended Job, then finishes it as `behaviour` says, with pods."""

    cluster: ClusterHandle
    namespace: str
    behaviour: Behaviour
    started: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    finished_at: dict[str, float] = field(default_factory=dict)  # monotonic time

    def jobs(self) -> list[dict[str, Any]]:
        return self.cluster.api.list(
            "batch/v1", "Job", self.namespace, "app.kubernetes.io/managed-by=evoquality-operator"
        )

    def _job_path(self, name: str) -> str:
        return f"/apis/batch/v1/namespaces/{self.namespace}/jobs/{name}/status"

    def tick(self, finish: Callable[[dict[str, Any]], bool] = lambda job: True) -> list[str]:
        """One pass; returns the names of the Jobs finished in it."""
        done = []
        for job in self.jobs():
            name = job["metadata"]["name"]
            if name in self.finished or job["spec"].get("suspend"):
                continue
            if name not in self.started:
                self.started.add(name)
                self.cluster.api.request(
                    "PATCH",
                    self._job_path(name),
                    body={"status": {"active": 1, "ready": 1, "startTime": now_iso()}},
                    content_type="application/merge-patch+json",
                )
                continue
            if not finish(job):
                continue
            outcome = self.behaviour(job)
            if outcome is None:
                continue
            self.finish(job, *outcome)
            done.append(name)
        return done

    def finish(self, job: dict[str, Any], verdict: str, detail: Any) -> None:
        name = job["metadata"]["name"]
        completions = int(job["spec"].get("completions") or 1)
        for index in range(completions):
            if verdict == "succeed":
                message = json.dumps(stage_summary(job, index, detail[index]))
                phase, code = "Succeeded", 0
            else:
                message, phase, code = str(detail), "Failed", 1
            self.cluster.put(
                f"/api/v1/namespaces/{self.namespace}/pods",
                {
                    "metadata": {
                        "name": f"{name}-{index}-{uuid.uuid4().hex[:5]}",
                        "labels": {"job-name": name, "batch.kubernetes.io/job-name": name},
                        "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                    },
                    "spec": {"containers": [{"name": "stage", "image": "x"}]},
                    "status": {
                        "phase": phase,
                        "containerStatuses": [
                            {
                                "name": "stage",
                                "state": {
                                    "terminated": {
                                        "exitCode": code,
                                        "message": message,
                                        "finishedAt": now_iso(),
                                        "reason": "Completed" if code == 0 else "Error",
                                    }
                                },
                            }
                        ],
                    },
                },
            )
            if verdict != "succeed":
                break
        condition = "Complete" if verdict == "succeed" else "Failed"
        status = {
            "active": 0,
            "ready": 0,
            "completionTime": now_iso() if verdict == "succeed" else None,
            "conditions": [
                {
                    "type": condition,
                    "status": "True",
                    "lastTransitionTime": now_iso(),
                    **({} if verdict == "succeed" else {"reason": "BackoffLimitExceeded"}),
                }
            ],
            ("succeeded" if verdict == "succeed" else "failed"): completions,
        }
        self.finished_at[name] = time.monotonic()
        self.cluster.api.request(
            "PATCH",
            self._job_path(name),
            body={"status": status},
            content_type="application/merge-patch+json",
        )
        self.finished.add(name)


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll with a bounded deadline (the test is the cluster's controllers, not the operator)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval)
