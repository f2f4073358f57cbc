"""The Helm chart, checked with a real helm binary (tests.plugins.helm).

`helm lint` with the default and every ci/*-values.yaml; `helm template` with and without the
monitoring.coreos.com/v1 API; every rendered object validated against the Kubernetes schemas
(kubernetes-validate, strict), the CRs (examples/*.yaml, the gpu-smoke run) against the CRD's own
openAPIV3Schema; bad values rejected by values.schema.json.
"""

from __future__ import annotations

import copy
import json
import py_compile
import runpy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from evoquality import crd as crd_module
from evoquality import spec as spec_module

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "evoquality"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
KUBE_VERSION = "1.33.0"
MONITORING = "monitoring.coreos.com/v1"

pytestmark = pytest.mark.usefixtures("helm_bin")


def render(helm, **kwargs) -> list[dict]:
    """The objects `helm install` creates (test hooks left out)."""
    return [
        o
        for o in helm.render(**kwargs)
        if "helm.sh/hook" not in o["metadata"].get("annotations", {})
    ]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def operator_container(objects: list[dict]) -> dict:
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def crd_schema() -> dict:
    """The CRD's openAPIV3Schema as a draft-4 JSON schema (OpenAPI 3.0: nullable, boolean
    exclusiveMinimum; x-kubernetes-* keywords are ignored by jsonschema)."""
    crd = yaml.safe_load((ROOT / "crds" / "evoqualityrun.yaml").read_text())
    schema = copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])

    def fix(node):
        if isinstance(node, dict):
            if node.pop("nullable", False) and "type" in node:
                node["type"] = [node["type"], "null"]
                if "enum" in node:
                    node["enum"] = [*node["enum"], None]
            for value in node.values():
                fix(value)
        elif isinstance(node, list):
            for value in node:
                fix(value)

    fix(schema)
    return schema


def validate_run(document: dict) -> None:
    """A CR against the CRD's schema and the pydantic models the operator validates with."""
    assert document["apiVersion"] == f"{spec_module.API_GROUP}/{spec_module.API_VERSION}"
    assert document["kind"] == spec_module.KIND
    jsonschema.Draft4Validator(crd_schema()).validate(document)
    spec_module.parse_run(document)


# ------------------------------------------------------------------------------------------
# CRD copy and revision
# ------------------------------------------------------------------------------------------


def test_chart_crd_is_the_generated_crd() -> None:
    chart_copy = CHART / "files" / "evoqualityrun.yaml"
    assert chart_copy.read_bytes() == (ROOT / "crds" / "evoqualityrun.yaml").read_bytes(), (
        "charts/evoquality/files/evoqualityrun.yaml differs from crds/evoqualityrun.yaml: run "
        "`make crds`"
    )


def test_chart_schema_revision_matches_the_operator() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["annotations"]["evoquality.io/schema-revision"] == crd_module.SCHEMA_REVISION


def test_rendered_crd_equals_the_file_plus_keep(helm) -> None:
    objects = render(helm)
    rendered = one(objects, "CustomResourceDefinition")
    original = yaml.safe_load((CHART / "files" / "evoqualityrun.yaml").read_text())
    annotations = rendered["metadata"]["annotations"]
    assert annotations["helm.sh/resource-policy"] == "keep"
    assert annotations["evoquality.io/schema-revision"] == crd_module.SCHEMA_REVISION
    assert rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    # Apart from the metadata Helm adds, the object is the generated one (numbers survive).
    assert rendered["spec"] == original["spec"]
    assert rendered["metadata"]["name"] == original["metadata"]["name"]


# ------------------------------------------------------------------------------------------
# lint and schema validation of every rendered object
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "default")
def test_helm_lint(helm, values: Path | None) -> None:
    args = ["lint", str(CHART), "--strict"]
    if values:
        args += ["--values", str(values)]
    result = helm.run(*args)
    assert "0 chart(s) failed" in result.stdout + result.stderr


def _validate_monitoring(obj: dict) -> None:
    """CRs of monitoring.coreos.com: the fields prometheus-operator needs."""
    assert obj["apiVersion"] == MONITORING
    assert obj["metadata"]["name"] and obj["metadata"]["namespace"]
    if obj["kind"] == "ServiceMonitor":
        spec = obj["spec"]
        assert spec["selector"]["matchLabels"]
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    elif obj["kind"] == "PrometheusRule":
        for group in obj["spec"]["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert rule["alert"] and rule["expr"]
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}
    else:
        raise AssertionError(f"unexpected monitoring kind {obj['kind']}")


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "default")
def test_every_rendered_object_is_valid(helm, values: Path | None) -> None:
    objects = helm.render(values=[values] if values else [], api_versions=[MONITORING])
    assert objects
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            _validate_monitoring(obj)
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']}: {exc}") from None
        name = obj["metadata"]["name"]
        assert len(name) <= 63 or obj["kind"] == "CustomResourceDefinition", name


def test_kubernetes_validate_catches_a_bad_object(helm) -> None:
    """Negative control: the validator used above does reject a malformed Deployment."""
    deployment = one(render(helm), "Deployment")
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


# ------------------------------------------------------------------------------------------
# operator Deployment, RBAC and watch scope
# ------------------------------------------------------------------------------------------


def test_operator_deployment_defaults(helm) -> None:
    objects = render(helm)
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = operator_container(objects)
    assert container["command"] == ["evoquality-operator"]
    args = container["args"]
    assert "--namespace=evoquality" in args
    assert "--metrics-addr=0.0.0.0" in args and "--metrics-port=8000" in args
    assert "--health-port=8080" in args
    # Every flag is one the operator's own parser accepts.
    from evoquality_operator.__main__ import parse_config

    config, _ = parse_config(args)
    assert config.namespaces == ("evoquality",) and not config.all_namespaces
    assert config.metrics_port == 8000 and config.metrics_addr == "0.0.0.0"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["port"] == "health"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EVOQUALITY_VOTER_IMAGE"] == "evoquality/voter:0.1.0"
    assert env["EVOQUALITY_TRAINER_IMAGE"] == "evoquality/trainer:0.1.0"
    assert env["EVOQUALITY_WORKER_IMAGE"] == "evoquality/worker:0.1.0"
    defaults = json.loads(env["EVOQUALITY_STAGE_DEFAULTS"])
    assert defaults["train"]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    service = one(objects, "Service")
    assert service["spec"]["ports"][0]["name"] == "metrics"
    selector = service["spec"]["selector"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in selector.items())


def test_images_from_a_private_registry(helm) -> None:
    objects = render(helm, values=[CHART / "ci" / "single-namespace-values.yaml"])
    container = operator_container(objects)
    assert container["image"] == "registry.example.com/ml/evoquality/operator:0.1.0"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EVOQUALITY_VOTER_IMAGE"] == "registry.example.com/ml/evoquality/voter:0.1.0-cu130"
    assert env["EVOQUALITY_TRAINER_IMAGE"].endswith(
        "/evoquality/trainer@sha256:" + "0123456789abcdef" * 4
    )
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def grants(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in rule["verbs"] and resource != "*" and group != "*"
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def check_operator_rules(rules: list[dict], reference: list[dict]) -> None:
    """No wildcards, no Secrets, and the same grants as the release namespace's Role (what the
    operator calls is compared with that Role by tests/plugins/rbac_record.py)."""
    granted = grants(rules)
    assert not {k for k in granted if k[1] == "secrets"}, "the operator needs no Secret access"
    assert granted == grants(reference)


def test_rbac_release_namespace(helm) -> None:
    objects = render(helm)
    (role,) = by_kind(objects, "Role")
    assert role["metadata"]["namespace"] == "evoquality"
    check_operator_rules(role["rules"], role["rules"])
    cluster = grants(one(objects, "ClusterRole")["rules"])
    assert cluster == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}
    }
    binding = one(objects, "RoleBinding")
    assert binding["subjects"][0]["name"] == one(objects, "ServiceAccount")["metadata"]["name"]


def test_rbac_namespace_list(helm) -> None:
    objects = render(helm, values=[CHART / "ci" / "namespaces-values.yaml"])
    roles = by_kind(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    (reference,) = by_kind(render(helm), "Role")
    for role in roles:
        check_operator_rules(role["rules"], reference["rules"])
    for binding in by_kind(objects, "RoleBinding"):
        assert binding["subjects"][0]["namespace"] == "evoquality"
    args = operator_container(objects)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args
    assert "--all-namespaces" not in args
    from evoquality_operator.__main__ import parse_config

    assert parse_config(args)[0].namespaces == ("team-a", "team-b")


def test_rbac_all_namespaces(helm) -> None:
    objects = render(helm, values=[CHART / "ci" / "all-namespaces-values.yaml"])
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")
    (reference,) = by_kind(render(helm), "Role")
    crd_reads = {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                 "verbs": ["get", "list", "watch"]}  # fmt: skip
    check_operator_rules(one(objects, "ClusterRole")["rules"], [*reference["rules"], crd_reads])
    args = operator_container(objects)["args"]
    assert "--all-namespaces" in args and not [a for a in args if a.startswith("--namespace=")]
    from evoquality_operator.__main__ import parse_config

    assert parse_config(args)[0].all_namespaces
    assert one(objects, "ServiceAccount")["metadata"]["name"] == "evoquality-operator-sa"
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "evoquality-operator-sa"


def test_crd_install_off(helm) -> None:
    objects = render(helm, values=[CHART / "ci" / "no-crds-values.yaml"])
    assert not by_kind(objects, "CustomResourceDefinition")
    notes = notes_of(helm, CHART / "ci" / "no-crds-values.yaml")
    assert "crds.install=false" in notes and "kubectl apply -f crds/evoqualityrun.yaml" in notes


def notes_of(helm, values: Path | None = None) -> str:
    """NOTES.txt as `helm install` prints it (a client-side dry run needs no cluster)."""
    args = ["install", "evoquality", str(CHART), "--namespace", "evoquality", "--dry-run=client"]
    if values:
        args += ["--values", str(values)]
    out = helm.run(*args).stdout
    assert "NOTES:" in out
    return out.split("NOTES:", 1)[1]


def test_notes_give_the_next_commands(helm) -> None:
    notes = notes_of(helm)
    assert "kubectl -n evoquality rollout status deployment/evoquality-operator" in notes
    assert "helm test evoquality" in notes and "gpuSmoke.storage.uri is not set" in notes
    assert "kubectl apply -f examples/qwen2.5-vl-7b.yaml" in notes
    assert "grafana_dashboard=1" in notes
    configured = notes_of(helm, CHART / "ci" / "gpu-smoke-values.yaml")
    assert "gpuSmoke.storage.uri is not set" not in configured


# ------------------------------------------------------------------------------------------
# monitoring: ServiceMonitor, PrometheusRule, dashboard
# ------------------------------------------------------------------------------------------


def test_monitoring_objects_need_the_api(helm) -> None:
    values = [CHART / "ci" / "monitoring-values.yaml"]
    without = render(helm, values=values)
    assert not by_kind(without, "ServiceMonitor") and not by_kind(without, "PrometheusRule")
    objects = render(helm, values=values, api_versions=[MONITORING])
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(objects, "Service")
    assert all(
        service["metadata"]["labels"].get(k) == v
        for k, v in monitor["spec"]["selector"]["matchLabels"].items()
    )
    rule = one(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {
        "EvoQualityRunFailed",
        "EvoQualityStageStuck",
        "EvoQualityRunNoProgress",
        "EvoQualityOperatorDown",
    }
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert r["labels"]["team"] == "ml-platform"
    no_progress = next(
        r
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if r["alert"] == "EvoQualityRunNoProgress"
    )
    assert "> 21600" in no_progress["expr"]  # 6 hours from the values file


def test_monitoring_objects_can_be_forced_for_gitops(helm) -> None:
    """`force` renders them without `--api-versions` (helm template in Argo CD or Flux)."""
    values = [CHART / "ci" / "monitoring-values.yaml"]
    forced = render(
        helm, values=values, sets=["serviceMonitor.force=true", "prometheusRule.force=true"]
    )
    assert len(by_kind(forced, "ServiceMonitor")) == len(by_kind(forced, "PrometheusRule")) == 1


def test_monitoring_off_by_default(helm) -> None:
    objects = render(helm, api_versions=[MONITORING])
    assert not by_kind(objects, "ServiceMonitor") and not by_kind(objects, "PrometheusRule")


def test_dashboard_configmap(helm) -> None:
    objects = render(helm, values=[CHART / "ci" / "monitoring-values.yaml"])
    (cm,) = [
        o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")
    ]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "EvoQuality"
    dashboard = json.loads(cm["data"]["evoquality.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "evoquality.json").read_text())
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"namespace", "run"} <= names


# ------------------------------------------------------------------------------------------
# helm test hook (gpu smoke) and custom resources
# ------------------------------------------------------------------------------------------


def _smoke_objects(helm, values: list[Path]) -> list[dict]:
    return [
        o
        for o in helm.render(values=values)
        if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]


@pytest.mark.parametrize(
    "values", [[], [CHART / "ci" / "gpu-smoke-values.yaml"]], ids=["default", "configured"]
)
def test_gpu_smoke_hook(helm, values: list[Path]) -> None:
    hooks = _smoke_objects(helm, values)
    assert sorted(o["kind"] for o in hooks) == [
        "ConfigMap",
        "Pod",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    ]
    pod = one(hooks, "Pod")
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["python", "/smoke/gpu_smoke.py"]
    config = one(hooks, "ConfigMap")["data"]
    assert config["gpu_smoke.py"] == (CHART / "files" / "gpu_smoke.py").read_text().rstrip("\n")
    run = yaml.safe_load(config["run.yaml"])
    assert run["spec"]["rounds"] == 1 and run["spec"]["model"]["base"] == "tiny"
    if values:
        validate_run(run)
        assert run["spec"]["model"]["engine"] == "transformers"
        assert run["spec"]["queueName"] == "gpu-queue"
        assert run["spec"]["storage"]["secretName"] == "minio-credentials"
        assert run["spec"]["pods"]["train"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["envFrom"] == [{"secretRef": {"name": "minio-credentials"}}]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SMOKE_DATA_URI"] == "s3://evoquality-smoke/ci/gpu-smoke-data"
        assert (
            run["spec"]["data"]["manifest"]
            == "s3://evoquality-smoke/ci/gpu-smoke-data/manifest.csv"
        )


def test_gpu_smoke_script() -> None:
    script = CHART / "files" / "gpu_smoke.py"
    py_compile.compile(str(script), doraise=True)
    module = runpy.run_path(str(script), run_name="gpu_smoke")
    assert module["split_s3"]("s3://bucket/a/b/") == ("bucket", "a/b")
    assert module["verdict"]({"phase": "Succeeded"}) == "ok"
    assert module["verdict"]({"phase": "Failed"}) == "failed"
    assert module["verdict"]({"phase": "Running"}) is None and module["verdict"](None) is None
    with pytest.raises(ValueError):
        module["split_s3"]("file:///tmp")


@pytest.mark.skipif(not EXAMPLES, reason="no examples/*.yaml yet")
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_match_the_crd_schema(example: Path) -> None:
    documents = [d for d in yaml.safe_load_all(example.read_text()) if d]
    runs = [d for d in documents if d.get("kind") == spec_module.KIND]
    assert runs, f"{example} holds no {spec_module.KIND}"
    for run in runs:
        validate_run(run)


def test_crd_schema_rejects_a_bad_run() -> None:
    """Negative control for the CR check: a wrong type and an unknown field are rejected."""
    bad = {
        "apiVersion": "evoquality.io/v1alpha1",
        "kind": "EvoQualityRun",
        "metadata": {"name": "bad"},
        "spec": {"data": {"manifest": "m.csv"}, "storage": {"uri": "s3://b/p"}, "rounds": "two"},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(crd_schema()).validate(bad)


# ------------------------------------------------------------------------------------------
# values.schema.json
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets, message",
    [
        (["unknownKey=1"], "unknownKey"),
        (["operator.imagee.tag=x"], "imagee"),
        (["metrics.port=abc"], "/metrics/port"),
        (["crds.install=maybe"], "/crds/install"),
        (["watch.scope=cluster"], "/watch/scope"),
        (["operator.resources=big"], "/operator/resources"),
        (["prometheusRule.noProgressHours=-1"], "noProgressHours"),
        (["gpuSmoke.engine=tensorrt"], "/gpuSmoke/engine"),
        (["gpuSmoke.storage.uri=file:///tmp/x"], "/gpuSmoke/storage/uri"),
        (["stageDefaults.train.resources.limits.nvidia\\.com/gpu=eight"], "stageDefaults"),
        (["serviceMonitor.interval=often"], "/serviceMonitor/interval"),
    ],
)
def test_bad_values_are_rejected(helm, sets: list[str], message: str) -> None:
    result = helm.template(sets=sets, check=False)
    assert result.returncode != 0, f"helm accepted {sets}"
    assert message in result.stderr, result.stderr


def test_namespaces_scope_needs_namespaces(helm) -> None:
    result = helm.template(sets=["watch.scope=namespaces"], check=False)
    assert result.returncode != 0 and "watch.namespaces" in result.stderr


def test_storage_secret_needs_keys(helm) -> None:
    result = helm.template(sets=["storageSecret.create=true"], check=False)
    assert result.returncode != 0 and "accessKeyId" in result.stderr
    objects = render(
        helm,
        sets=[
            "storageSecret.create=true",
            "storageSecret.accessKeyId=AKIAEXAMPLE",
            "storageSecret.secretAccessKey=example",
        ],
    )
    secret = one(objects, "Secret")
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
