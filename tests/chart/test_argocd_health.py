"""The Argo CD health check (charts/optimodel/argocd/health.lua) run by a real Lua runtime.

Argo CD evaluates the script with gopher-lua (Lua 5.1 semantics) and a global ``obj``; lupa
embeds the reference Lua. The script uses only what both offer (tables, ipairs, string.format,
tostring), so a pass here means the same answers inside Argo CD. The argocd-cm snippet and the
docs must carry exactly this script.
"""

from __future__ import annotations

import pytest
import yaml
from chart import CHART, REPO
from testcluster import need_module

lupa = need_module("lupa", "lupa (a real Lua runtime, test extra)")

SCRIPT = (CHART / "argocd" / "health.lua").read_text()
KEY = "resource.customizations.health.optimodel.dev_OptimizedModel"


def to_lua(runtime, value):
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def health(obj: dict | None) -> tuple[str, str]:
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals()["obj"] = to_lua(runtime, obj) if obj is not None else None
    result = runtime.execute(SCRIPT)
    return result["status"], result["message"]


def cond(type_: str, status: str, reason: str, message: str) -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


def model(status: dict | None, generation: int = 3) -> dict:
    body = {"apiVersion": "optimodel.dev/v1alpha1", "kind": "OptimizedModel",
            "metadata": {"name": "minilm", "namespace": "ml", "generation": generation},
            "spec": {"model": {"uri": "s3://b/m.onnx", "format": "onnx"}}}
    if status is not None:
        body["status"] = status
    return body


READY_CONDITIONS = [cond("Built", "True", "EngineBuilt", "Engine 0123456789 (int8, tensorrt) built and verified"),
                    cond("Deployed", "True", "TritonDeployed", "Triton serves engine 0123456789"),
                    cond("Ready", "True", "ReplicasReady", "2/2 replicas ready")]

CASES = {
    "ready": ({"phase": "Ready", "observedGeneration": 3, "conditions": READY_CONDITIONS},
              ("Healthy", "2/2 replicas ready")),
    "ready without conditions": ({"phase": "Ready", "observedGeneration": 3}, ("Healthy", "Ready")),
    "pending": ({"phase": "Pending", "observedGeneration": 3}, ("Progressing", "Pending")),
    "building": ({"phase": "Building", "observedGeneration": 3, "conditions": [
        cond("Built", "False", "Building", "Building engine abc in Job minilm-build-abc")]},
        ("Progressing", "Building engine abc in Job minilm-build-abc")),
    "deploying": ({"phase": "Deploying", "observedGeneration": 3, "conditions": [
        cond("Built", "True", "EngineBuilt", "built"), cond("Ready", "False", "ReplicasNotReady", "0/2 replicas ready")]},
        ("Progressing", "0/2 replicas ready")),
    "failed": ({"phase": "Failed", "observedGeneration": 3, "message": "AccuracyGateFailed: no candidate reached cosine 0.99",
                "conditions": [cond("Built", "False", "BuildFailed", "AccuracyGateFailed: no candidate reached cosine 0.99")]},
               ("Degraded", "AccuracyGateFailed: no candidate reached cosine 0.99")),
    "failed, message only on the condition": (
        {"phase": "Failed", "observedGeneration": 3,
         "conditions": [cond("Built", "False", "BuildFailed", "ExportFailed: unsupported op")]},
        ("Degraded", "ExportFailed: unsupported op")),
    "failed, nothing said": ({"phase": "Failed", "observedGeneration": 3}, ("Degraded", "Build failed")),
    "ready phase but Ready condition False": (
        {"phase": "Ready", "observedGeneration": 3, "conditions": [
            cond("Built", "True", "EngineBuilt", "built"), cond("Ready", "False", "ReplicasNotReady", "0/2 replicas ready")]},
        ("Degraded", "0/2 replicas ready")),
    "spec edited, not yet observed": ({"phase": "Ready", "observedGeneration": 2, "conditions": READY_CONDITIONS},
                                      ("Progressing", "Waiting for the operator to observe generation 3")),
    "failed but outdated": ({"phase": "Failed", "observedGeneration": 2}, ("Progressing", "Waiting for the operator to observe generation 3")),
    "no observedGeneration": ({"phase": "Ready"}, ("Progressing", "Waiting for the operator to observe generation 3")),
    "unknown phase": ({"phase": "Exploded", "observedGeneration": 3}, ("Unknown", "Unknown phase Exploded")),
}


@pytest.mark.parametrize("case", CASES)
def test_health(case):
    status, expected = CASES[case]
    assert health(model(status)) == expected


def test_no_status_is_progressing():
    assert health(model(None)) == ("Progressing", "Waiting for the optimodel operator to reconcile")
    assert health(model({})) == ("Progressing", "Waiting for the optimodel operator to reconcile")


def test_missing_object():
    assert health(None) == ("Missing", "OptimizedModel not found")


def test_floats_from_json_still_compare():
    """Argo CD hands numbers over as float64: generation 3.0 vs observedGeneration 3.0."""
    obj = model({"phase": "Ready", "observedGeneration": 3.0, "conditions": READY_CONDITIONS}, generation=3.0)
    assert health(obj)[0] == "Healthy"


def test_snippets_and_docs_carry_the_script():
    cm = yaml.safe_load((CHART / "argocd" / "argocd-cm.yaml").read_text())
    assert cm["data"][KEY] == SCRIPT
    values = yaml.safe_load((CHART / "argocd" / "argo-cd-values.yaml").read_text())
    assert values["configs"]["cm"][KEY] == SCRIPT
    docs = (REPO / "docs" / "argocd.md").read_text()
    indented = "".join(f"    {line}" if line.strip() else line for line in SCRIPT.splitlines(True))
    assert indented in docs, "docs/argocd.md does not show the current health.lua (indented 4 spaces)"
