"""The committed CRD is exactly what the spec models generate, and it is structural."""

from pathlib import Path

import yaml

from evoquality.crd import build_crd, render_crd

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
