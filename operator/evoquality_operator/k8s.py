"""The few Kubernetes API calls the operator makes, as raw JSON over the official client.

Raw dicts (not the client's models) keep camelCase manifests as they are and skip the model
deserialisation. Calls are synchronous: the handlers run them in worker threads.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import kubernetes
from kubernetes.client.exceptions import ApiException

from evoquality import crd as crd_module
from evoquality.spec import API_GROUP, API_VERSION, PLURAL

log = logging.getLogger("evoquality_operator")
MERGE_PATCH = "application/merge-patch+json"
SCHEMA_ANNOTATION = "evoquality.io/schema-revision"
_PATHS = {
    ("batch/v1", "Job"): "/apis/batch/v1/namespaces/{ns}/jobs",
    ("v1", "ConfigMap"): "/api/v1/namespaces/{ns}/configmaps",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services",
    ("v1", "Pod"): "/api/v1/namespaces/{ns}/pods",
    ("v1", "Event"): "/api/v1/namespaces/{ns}/events",
}
EVENT_SOURCE = "evoquality-operator"
RUNS_PATH = f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{{ns}}/{PLURAL}"


def load_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account when running in a pod, else the kubeconfig.

    $KUBECONFIG is read at call time (the client library reads it once, at import).
    """
    configuration = kubernetes.client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    else:
        kubernetes.config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
        )
    return configuration


def make_api_client() -> kubernetes.client.ApiClient:
    return kubernetes.client.ApiClient(load_configuration())


def connection_info(configuration: kubernetes.client.Configuration, trust_env: bool = False):
    """The client's credentials as kopf's ConnectionInfo (kopf and the client log in alike)."""
    import kopf

    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        trust_env=trust_env,
    )


class ForeignObjectError(RuntimeError):
    """An object the operator would create exists already and belongs to another owner."""


class Api:
    """JSON requests against the API server with the client's auth and TLS settings."""

    def __init__(self, client: kubernetes.client.ApiClient, timeout_s: float = 30.0) -> None:
        self.client = client
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.client.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        serialized = self.client.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()) or None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.client.call_api(*serialized, _request_timeout=self.timeout_s)
        data = response.read()
        if response.status >= 400:
            raise ApiException(status=response.status, reason=response.reason, body=data.decode())
        return json.loads(data) if data else {}

    # --- reads -------------------------------------------------------------------------------

    def get_run(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", f"{RUNS_PATH.format(ns=namespace)}/{quote(name)}")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self, api_version: str, kind: str, namespace: str, selector: str, fields: str = ""
    ) -> list[dict]:
        path = _PATHS[(api_version, kind)].format(ns=namespace)
        query = {"labelSelector": selector, **({"fieldSelector": fields} if fields else {})}
        return self.request("GET", path, query=query).get("items") or []

    def get_crd(self, name: str = crd_module.CRD_NAME) -> dict[str, Any] | None:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        try:
            return self.request("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # --- writes ------------------------------------------------------------------------------

    def create_or_adopt(self, obj: Mapping[str, Any]) -> str:
        """Create `obj`; when it exists already (409), adopt it if it has the same owner. Returns
        "created"/"adopted"; raises `ForeignObjectError` for an object of another owner (e.g. the
        `<run>-spec` ConfigMap of a deleted run of the same name, not yet garbage-collected: using
        it would run the old spec, and the collector would delete it under the new run)."""
        meta = obj["metadata"]
        path = _PATHS[(obj["apiVersion"], obj["kind"])].format(ns=meta["namespace"])
        try:
            self.request("POST", path, body=obj)
            return "created"
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self.request("GET", f"{path}/{quote(meta['name'])}")
        owners = {o.get("uid") for o in existing.get("metadata", {}).get("ownerReferences") or []}
        wanted = {o.get("uid") for o in meta.get("ownerReferences") or []}
        if wanted and not owners & wanted:
            raise ForeignObjectError(
                f"{obj['kind']} {meta['namespace']}/{meta['name']} exists but belongs to another "
                "owner (a deleted run's, until the garbage collector removes it); retrying"
            )
        return "adopted"

    def set_job_suspended(self, namespace: str, name: str, suspend: bool) -> None:
        path = f"{_PATHS[('batch/v1', 'Job')].format(ns=namespace)}/{quote(name)}"
        self.request("PATCH", path, body={"spec": {"suspend": suspend}}, content_type=MERGE_PATCH)

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job and, before it disappears, its pods (foreground: a new Job of the same
        name cannot start while the old pods still hold their GPUs). Gone already is fine."""
        path = f"{_PATHS[('batch/v1', 'Job')].format(ns=namespace)}/{quote(name)}"
        try:
            self.request("DELETE", path, body={"propagationPolicy": "Foreground"})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def post_event(
        self, involved: Mapping[str, Any], kind: str, reason: str, message: str, when: str
    ) -> None:
        """A core/v1 Event about `involved` (an object's apiVersion, kind, metadata)."""
        meta = involved["metadata"]
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "reportingInstance": os.environ.get("HOSTNAME", EVENT_SOURCE),
            "firstTimestamp": when,
            "lastTimestamp": when,
            "count": 1,
        }
        path = _PATHS[("v1", "Event")].format(ns=meta["namespace"])
        self.request("POST", path, body=event)

    def patch_run_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        path = f"{RUNS_PATH.format(ns=namespace)}/{quote(name)}/status"
        self.request("PATCH", path, body={"status": patch}, content_type=MERGE_PATCH)


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) turning `old` into `new`; None when they are equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        patch: dict[str, Any] = {}
        for key in old.keys() - new.keys():
            patch[key] = None
        for key, value in new.items():
            if key not in old:
                patch[key] = value
            else:
                sub = merge_patch(old[key], value)
                if sub is not None:
                    patch[key] = sub
        return patch or None
    return None if old == new else new


def check_crd_revision(
    crd: Mapping[str, Any] | None, expected: str = crd_module.SCHEMA_REVISION
) -> tuple[bool, str]:
    """(may start, log line) for the installed CRD's schema revision annotation.

    Refuses an older (or unmarked) CRD: the operator would write status fields or read spec fields
    the API server prunes. A newer CRD is allowed with a warning (schema changes are additive
    within a revision line).
    """
    if crd is None:
        return False, (
            f"CustomResourceDefinition {crd_module.CRD_NAME} is not installed; "
            "apply crds/evoqualityrun.yaml (or install the Helm chart) first"
        )
    annotations = (crd.get("metadata") or {}).get("annotations") or {}
    found = annotations.get(SCHEMA_ANNOTATION)
    try:
        installed, wanted = int(found), int(expected)
    except (TypeError, ValueError):
        return False, (
            f"CRD {crd_module.CRD_NAME} has no valid {SCHEMA_ANNOTATION} annotation "
            f"(found {found!r}, this operator needs revision {expected}); upgrade the CRD: "
            "kubectl apply -f crds/evoqualityrun.yaml"
        )
    if installed < wanted:
        return False, (
            f"CRD {crd_module.CRD_NAME} schema revision {installed} is older than the revision "
            f"{wanted} this operator needs; refusing to start. Upgrade the CRD first: "
            "kubectl apply -f crds/evoqualityrun.yaml (Helm does not upgrade CRDs)"
        )
    if installed > wanted:
        return True, (
            f"CRD {crd_module.CRD_NAME} schema revision {installed} is newer than this operator's "
            f"{wanted}; consider upgrading the operator"
        )
    return True, f"CRD {crd_module.CRD_NAME} schema revision {installed} matches"
