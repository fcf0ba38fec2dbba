"""Generated files are never hand-edited: a test fails when they drift from their generator."""

from __future__ import annotations

from pathlib import Path

import yaml

from optimodel.api.crd import crd_manifest, render_crd

REPO = Path(__file__).resolve().parents[2]


def test_crd_file_is_the_generators_output():
    on_disk = (REPO / "crds" / "optimizedmodel.yaml").read_text()
    assert on_disk == render_crd(), "crds/optimizedmodel.yaml is stale: run `make crd`"


def test_image_requirement_lists_are_the_generators_output():
    import images  # hack/images.py

    rendered = images.rendered_requirements()
    on_disk = {p.name: p.read_text() for p in (REPO / "requirements").glob("*.txt")}
    assert on_disk == rendered, "requirements/*.txt are stale: run `make manifests`"


def _walk(schema: dict, path: str = ""):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")


def test_every_spec_field_is_described_for_kubectl_explain():
    spec = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    undocumented = [p for p, s in _walk(spec) if p and "description" not in s and not p.endswith("[]")]
    assert undocumented == []


def test_schema_is_structural():
    """No JSON-Schema-only keywords the API server rejects; every node has a type."""
    schema = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    for keyword in ("$ref", "anyOf", "title:", "const:", "additionalProperties: false"):
        assert keyword not in text
    untyped = [p for p, s in _walk(schema) if "type" not in s]
    assert untyped == []


def test_printer_columns_and_names():
    crd = crd_manifest()
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["om"]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:5] == [
        "Phase", "Precision", "Speedup", "Ready", "Replicas"]
