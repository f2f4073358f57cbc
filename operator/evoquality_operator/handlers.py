"""kopf wiring only: every handler pokes `Operator.reconcile` for one run.

- run created / resumed / updated (`suspend`, `queueName`)  -> reconcile that run
- a timer on every run                                       -> reconcile (safety net)
- any event of a child Job (label managed-by)                 -> reconcile its owner run
- any event of a stage pod (label managed-by)                  -> reconcile its run (by label)
- run deleted                                                 -> forget its metrics
Children are deleted by Kubernetes through their owner references; artifacts are never deleted.

Configuration comes from `configure()` (the CLI) or, when kopf loads this module itself
(`kopf run -m evoquality_operator.handlers`), from EVOQUALITY_* environment variables.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client import start_http_server

from evoquality.spec import API_GROUP, API_VERSION, KIND, PLURAL
from evoquality.telemetry import RunMetrics

from . import naming
from .controller import Operator, OperatorConfig
from .k8s import Api, check_crd_revision, connection_info, load_configuration, make_api_client

log = logging.getLogger("evoquality_operator")
RUNS = (API_GROUP, API_VERSION, PLURAL)
RESYNC_SECONDS = float(os.environ.get("EVOQUALITY_RESYNC_SECONDS", "60"))
FINALIZER = f"{API_GROUP}/operator"
_configured: OperatorConfig | None = None


class CRDTooOld(kopf.PermanentError):
    """The installed CRD is older than this operator: refuse to start."""


def configure(config: OperatorConfig) -> None:
    global _configured
    _configured = config


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """Log kopf in exactly as the operator's own API client (service account or $KUBECONFIG)."""
    return connection_info(load_configuration(), trust_env=settings.networking.trust_env)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_: Any) -> None:
    config = _configured or OperatorConfig.from_env()
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING  # Events only for warnings and errors
    settings.persistence.finalizer = FINALIZER
    # server-side filtering: the API server sends only the operator's own Jobs
    managed = f"{naming.MANAGED_BY_LABEL}={naming.MANAGED_BY}"
    settings.watching.label_selectors["batch", "jobs"] = managed
    settings.watching.label_selectors["v1", "pods"] = managed  # stage pods carry the Job's labels
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration"
    )
    api = Api(make_api_client())
    if config.check_crd:
        try:
            crd = await asyncio.to_thread(api.get_crd)
        except ApiException as exc:
            logger.warning("cannot read the CRD to check its schema revision: %s", exc.reason)
        else:
            ok, message = check_crd_revision(crd)
            if not ok:
                logger.error(message)
                api.close()
                raise CRDTooOld(message)
            logger.info(message)
    metrics = RunMetrics()
    server, thread = start_http_server(
        config.metrics_port, addr=config.metrics_addr, registry=metrics.registry
    )
    logger.info("metrics on http://%s:%d/metrics", config.metrics_addr, server.server_port)
    memo.metrics_server = (server, thread)
    memo.operator = Operator(config, api, metrics)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    operator: Operator | None = getattr(memo, "operator", None)
    if operator is not None:
        operator.close()
        operator.api.close()
    server_thread = getattr(memo, "metrics_server", None)
    if server_thread is not None:
        server, thread = server_thread
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@kopf.on.resume(*RUNS)
@kopf.on.create(*RUNS)
@kopf.on.update(*RUNS)
async def run_changed(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    await memo.operator.reconcile(namespace, name)


@kopf.timer(*RUNS, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS)
async def resync(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    await memo.operator.reconcile(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={naming.MANAGED_BY_LABEL: naming.MANAGED_BY})
async def job_event(body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    for owner in body.metadata.get("ownerReferences") or []:
        if owner.get("kind") == KIND and str(owner.get("apiVersion", "")).startswith(API_GROUP):
            await memo.operator.reconcile(namespace, owner["name"])


@kopf.on.event("", "v1", "pods", labels={naming.MANAGED_BY_LABEL: naming.MANAGED_BY})
async def pod_event(body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """A stage pod changed (scheduled, pulling, waiting, Ready): its run says why it waits."""
    run = memo.operator.run_of_label(namespace, body.metadata.labels.get(naming.RUN_LABEL, ""))
    if run is not None:
        await memo.operator.reconcile(namespace, run)


@kopf.on.delete(*RUNS, optional=True)
async def run_deleted(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.operator.forget(namespace, name)


@kopf.on.event(*RUNS)
async def run_event(event: kopf.RawEvent, namespace: str, name: str, memo, **_: Any) -> None:
    if event.get("type") == "DELETED":
        memo.operator.forget(namespace, name)
