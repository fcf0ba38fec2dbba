"""Layering contracts (the spirit of kopf's import-linter contract), checked on the source.

- The operator and the stager never import torch, ONNX Runtime, TensorRT or the builder: the
  operator image does not ship them. Neither does any module of ``optimodel.triton`` (the
  stager's package), not even inside a function.
- Inside the operator, layers only import downwards: handlers -> reconcile -> manifests / kube
  -> settings; ``manifests`` is pure (no API client), and only ``kube`` talks to the API server.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

OPERATOR = Path(__file__).resolve().parents[2] / "operator"
TRITON = Path(__file__).resolve().parents[2] / "optimodel" / "triton"
HEAVY = ("torch", "onnxruntime", "onnx", "tensorrt", "transformers", "optimodel.builder")


def imports_of(module: str, package: Path = OPERATOR) -> set[str]:
    tree = ast.parse((package / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_operator_and_stager_import_no_heavy_package():
    code = ("import sys, optimodel.operator.handlers, optimodel.operator.run, optimodel.triton.stage, "
            "optimodel.triton.metrics, optimodel.triton.layout, optimodel.triton.config, "
            "optimodel.triton.overrides, optimodel.triton.repository, optimodel.triton.local, "
            "optimodel.cli; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m in {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd="/", env={"PYTHONSAFEPATH": "1", "PATH": "/usr/bin:/bin"}).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("module", sorted(p.stem for p in TRITON.glob("*.py")))
def test_triton_package_imports_no_heavy_package_anywhere(module):
    """Function-level imports included: the stager runs ``config``, ``overrides`` and ``stage``
    in the operator image, so no code path of the package may need the builder's packages."""
    found = {name for name in imports_of(module, TRITON)
             for heavy in HEAVY if name == heavy or name.startswith(heavy + ".")}
    assert found == set()


@pytest.mark.parametrize("module,forbidden", [
    ("manifests", {"optimodel.operator.kube", "optimodel.operator.reconcile", "kubernetes", "kopf"}),
    ("failures", {"optimodel.operator.kube", "optimodel.operator.reconcile", "kubernetes", "kopf"}),
    ("workqueue", {"optimodel.operator", "optimodel.api", "kubernetes", "kopf"}),
    ("leader", {"optimodel.operator.reconcile", "optimodel.operator.handlers", "kopf"}),
    ("conditions", {"optimodel.operator.kube", "optimodel.operator.reconcile", "kubernetes", "kopf"}),
    ("settings", {"optimodel.operator.kube", "optimodel.operator.reconcile", "optimodel.operator.manifests"}),
    ("kube", {"optimodel.operator.reconcile", "optimodel.operator.manifests", "optimodel.operator.handlers", "kopf"}),
    ("reconcile", {"optimodel.operator.handlers", "kopf", "kubernetes"}),
])
def test_operator_layers_import_only_downwards(module, forbidden):
    found = {name for name in imports_of(module) for f in forbidden if name == f or name.startswith(f + ".")}
    assert found == set()
