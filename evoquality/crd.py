"""Generate the `EvoQualityRun` CustomResourceDefinition from the pydantic spec models.

The CRD's OpenAPI v3 schema is structural (every node typed, no $ref, no anyOf of types): the
pydantic JSON schema is inlined, nullable unions are folded into `nullable: true`, free-form
objects get `x-kubernetes-preserve-unknown-fields`, and strings and lists get bounds so that the
CEL immutability rules stay within the API server's cost budget. `make crds` writes the result to
`crds/evoqualityrun.yaml`; a test fails when the committed file differs.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from evoquality import spec as spec_models

CRD_NAME = f"{spec_models.PLURAL}.{spec_models.API_GROUP}"
DEFAULT_MAX_LENGTH = 4096
DEFAULT_MAX_ITEMS = 256
DEFAULT_MAX_PROPERTIES = 64
# The schema version the operator expects; bump when the CRD changes incompatibly.
SCHEMA_REVISION = "1"
_DROP_KEYS = {"title", "default", "examples"}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target.update(extra)
        return _resolve(target, defs)
    return {k: _resolve(v, defs) for k, v in node.items() if k not in _DROP_KEYS}


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Turn one resolved JSON-schema node into a structural OpenAPI v3 node."""
    node = dict(node)
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"cannot express union {variants} structurally")
        merged = {**variants[0], **node}
        merged["nullable"] = True
        return _structural(merged)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(exclusive), int | float) and not isinstance(node[exclusive], bool):
            node[bound] = node.pop(exclusive)
            node[exclusive] = True  # OpenAPI v3.0 form: a flag beside the bound
    kind = node.get("type")
    if kind is None and "enum" in node:
        node["type"] = "string"
        kind = "string"
    if kind is None:
        node["type"] = "object"
        node["x-kubernetes-preserve-unknown-fields"] = True
        return node
    if kind == "object":
        properties = node.get("properties")
        additional = node.pop("additionalProperties", None)
        names = node.pop("propertyNames", None)  # a dict keyed by a Literal: named properties
        if names is not None and isinstance(additional, dict) and not properties:
            properties = node["properties"] = {name: additional for name in names["enum"]}
        if properties:
            node["properties"] = {k: _structural(v) for k, v in properties.items()}
        elif isinstance(additional, dict) and additional:
            node["additionalProperties"] = _structural(additional)
            node.setdefault("maxProperties", DEFAULT_MAX_PROPERTIES)
        else:
            node["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        node["items"] = _structural(node.get("items", {}))
        node.setdefault("maxItems", DEFAULT_MAX_ITEMS)
    elif kind == "string":
        node.setdefault("maxLength", DEFAULT_MAX_LENGTH)
    return node


def spec_schema() -> dict[str, Any]:
    """Structural schema of `.spec`, with CEL rules making all but suspend/queueName immutable."""
    raw = spec_models.EvoQualityRunSpec.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _structural(_resolve(raw, defs))
    immutable = [n for n in schema["properties"] if n not in spec_models.MUTABLE_SPEC_FIELDS]
    for name in immutable:
        schema["properties"][name]["x-kubernetes-validations"] = [
            {"rule": "self == oldSelf", "message": f"spec.{name} is immutable"}
        ]
    # A property's own transition rule runs only when it exists before and after: adding or
    # removing an optional section is caught here, at the spec level.
    schema["x-kubernetes-validations"] = [
        {
            "rule": " && ".join(f"has(self.{n}) == has(oldSelf.{n})" for n in immutable),
            "message": "immutable spec sections cannot be added or removed (only suspend and "
            "queueName change)",
        }
    ]
    return schema


def status_schema() -> dict[str, Any]:
    """Status written by the operator: typed top-level fields, free-form per-round details."""
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
        },
    }
    return {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "phase": {"type": "string"},
            "round": {"type": "integer"},
            "stage": {"type": "string"},
            "bestValidationSrcc": {"type": "number"},
            "checkpoint": {"type": "string"},
            "observedGeneration": {"type": "integer"},
            "conditions": {
                "type": "array",
                "items": condition,
                # one condition per type, merged by type (server-side apply, kubectl)
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "rounds": {
                "type": "array",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
    }


def build_crd() -> dict[str, Any]:
    """The full CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "annotations": {"evoquality.io/schema-revision": SCHEMA_REVISION},
        },
        "spec": {
            "group": spec_models.API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": spec_models.KIND,
                "listKind": f"{spec_models.KIND}List",
                "plural": spec_models.PLURAL,
                "singular": spec_models.KIND.lower(),
                "shortNames": ["eqr"],
                "categories": ["evoquality"],
            },
            "versions": [
                {
                    "name": spec_models.API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Round", "type": "integer", "jsonPath": ".status.round"},
                        {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
                        {
                            "name": "Best SRCC",
                            "type": "number",
                            "jsonPath": ".status.bestValidationSrcc",
                        },
                        {
                            "name": "Age",
                            "type": "date",
                            "jsonPath": ".metadata.creationTimestamp",
                        },
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd() -> str:
    """The CRD as the YAML text committed in `crds/evoqualityrun.yaml`."""
    header = "# Generated from evoquality/spec.py by `make crds`; do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


if __name__ == "__main__":
    print(render_crd(), end="")
