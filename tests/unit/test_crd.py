"""The committed CRD is exactly what the spec models generate, and it is structural."""

from pathlib import Path

import pytest
import yaml

from evoquality.crd import build_crd, render_crd
from evoquality.spec import SpecError, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crd_matches_the_models():
    committed = (ROOT / "crds" / "evoqualityrun.yaml").read_text()
    assert committed == render_crd(), "crds/evoqualityrun.yaml is stale: run `make crds`"


def _walk(node, path="spec"):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural():
    version = build_crd()["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in _walk(schema):
        assert "type" in node, f"{path} has no type"
        assert not {"$ref", "anyOf", "oneOf", "allOf", "const"} & set(node), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path
        if node["type"] == "string":
            assert "maxLength" in node, path
        if node["type"] == "array":
            assert "maxItems" in node, path


def test_immutability_rules_spare_suspend_and_queue():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    assert "x-kubernetes-validations" not in props["suspend"]
    assert "x-kubernetes-validations" not in props["queueName"]
    assert props["model"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"


def test_printer_columns_and_status_subresource():
    version = build_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names == ["Phase", "Round", "Stage", "Best SRCC", "Age"]
    assert yaml.safe_load(render_crd())["metadata"]["name"] == "evoqualityruns.evoquality.io"


def _allowed(old: dict, new: dict) -> bool:
    """Every CEL rule of the spec schema (spec level and per section) on an update, evaluated by
    a CEL interpreter with the API server's transition semantics: a section's own rule runs only
    when the section exists before and after."""
    import celpy

    env = celpy.Environment()
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    checks = [(schema, new, old)]
    for name, prop in schema["properties"].items():
        if name in new and name in old:
            checks.append((prop, new[name], old[name]))
    for node, value, previous in checks:
        for rule in node.get("x-kubernetes-validations", []):
            program = env.program(env.compile(rule["rule"]))
            activation = {"self": celpy.json_to_cel(value), "oldSelf": celpy.json_to_cel(previous)}
            if not program.evaluate(activation):
                return False
    return True


def test_cel_rules_keep_the_spec_immutable_but_suspend_and_queue_name():
    old = {"data": {"manifest": "a.csv"}, "storage": {"uri": "s3://b"}, "rounds": 2}
    assert _allowed(old, {**old, "suspend": True, "queueName": "q"})
    assert not _allowed(old, {**old, "rounds": 3})  # a section changed
    assert not _allowed(old, {**old, "training": {"beta": 0.1}})  # an optional section added
    assert not _allowed({**old, "training": {"beta": 0.1}}, old)  # ... or removed
    assert _allowed({**old, "suspend": True}, old)  # a mutable field removed


def _crd_errors(spec: dict) -> list[str]:
    """What the API server's schema validation says of a spec (OpenAPI v3.0 is draft 4 with
    `nullable`; the x-kubernetes-* keys are not validation keywords here)."""
    import jsonschema

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(spec)]


def test_the_crd_refuses_a_resource_quantity_kubernetes_would_not_parse():
    base = {"data": {"manifest": "s3://b/pool.csv"}, "storage": {"uri": "s3://b/runs"}}
    good = {**base, "pods": {"train": {"resources": {"limits": {"memory": "64Gi", "cpu": "500m"}}}}}
    assert _crd_errors(good) == []
    bad = {**base, "pods": {"train": {"resources": {"requests": {"memory": "64GB"}}}}}
    (error,) = _crd_errors(bad)
    assert "'64GB' does not match" in error
    with pytest.raises(SpecError, match="pattern"):  # the operator and `evoquality run` too
        parse_spec(bad)


def test_conditions_are_a_map_keyed_by_type():
    status = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
