"""Generate the ``OptimizedModel`` CustomResourceDefinition from the pydantic models.

The CRD is never hand-edited: ``optimodel crd`` prints it, ``crds/optimizedmodel.yaml`` and the
chart's copy are its output, and a test fails when either is stale. Pydantic emits JSON Schema
2020-12; Kubernetes wants a *structural* OpenAPI v3.0 subset, so this module inlines ``$ref``s,
turns ``X | None`` into an optional ``X``, maps exclusive bounds to the OpenAPI 3.0 spelling and
drops keywords the API server rejects (``title``, ``const``, ...).
"""

from __future__ import annotations

from typing import Any

import yaml

from optimodel.api.spec import OptimizedModelSpec
from optimodel.api.status import OptimizedModelStatus

GROUP = "optimodel.dev"
VERSION = "v1alpha1"
KIND = "OptimizedModel"
PLURAL = "optimizedmodels"
SINGULAR = "optimizedmodel"
SHORT_NAMES = ["om"]
CATEGORIES = ["all", "ml"]

_DROP = {"title", "$defs", "const", "discriminator", "examples"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Resolve ``$ref``s and rewrite one JSON Schema node into structural OpenAPI."""
    if isinstance(node, list):
        return [_inline(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _inline(merged, defs)
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        if len(variants) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            if rest.get("default", 0) is None:
                rest.pop("default")
            variant = _inline(variants[0], defs)
            # Validations stated on the field (the outer node) and on the type both apply.
            rules = variant.get("x-kubernetes-validations", []) + rest.pop("x-kubernetes-validations", [])
            out = {**variant, **_inline(rest, defs)}
            if rules:
                out["x-kubernetes-validations"] = rules
            return out
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: _inline(sub, defs) for name, sub in value.items()}
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields; False is not allowed here
        elif key == "items" and isinstance(value, dict):
            out[key] = _inline(value, defs)
        else:
            out[key] = _inline(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("type") == "object" and "properties" in out and out.get("required") == []:
        del out["required"]
    # An object map (dict[str, str]) keeps its additionalProperties schema.
    return out


def openapi_schema(model: type) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of one pydantic model (by alias, i.e. camelCase)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _inline(raw, defs)




PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Precision", "type": "string", "jsonPath": ".status.precision"},
    {"name": "Speedup", "type": "string", "jsonPath": ".status.benchmark.speedupText"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas", "priority": 1},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


NAME_RULE = {
    # The name becomes a Service name (DNS-1035 label), label values and the prefix of Job names.
    "rule": "self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
    "message": "metadata.name must be a DNS-1035 label (at most 63 characters: lower-case letters, "
    "digits and '-', starting with a letter and ending with a letter or digit), because it names "
    "the model's Service, Deployment and labels",
}


def crd_manifest() -> dict[str, Any]:
    """The full CRD object."""
    spec_schema = openapi_schema(OptimizedModelSpec)
    spec_schema["description"] = (
        "Desired state: the model, how to optimize it, and how to serve and scale it."
    )
    status_schema = openapi_schema(OptimizedModelStatus)
    status_schema["description"] = "Observed state, written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "optimodel", "app.kubernetes.io/part-of": "optimodel"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "OptimizedModel turns a trained model into a fast, autoscaled "
                    "Triton inference service: build (compress, compile, verify, benchmark), "
                    "then serve and scale on queue depth.",
                    "required": ["spec"],
                    "x-kubernetes-validations": [NAME_RULE],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": status_schema,
                    },
                }},
            }],
        },
    }


def render_crd() -> str:
    """YAML text of the CRD, stable across runs (what ``optimodel crd`` prints)."""
    header = "# Generated by `optimodel crd` from optimodel/api/*.py. Do not edit.\n"
    return header + yaml.safe_dump(crd_manifest(), sort_keys=False, width=100)
