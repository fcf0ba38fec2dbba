"""Fixtures for running the real operator (``optimodel operator`` as a subprocess, exactly as in
its container) against the real control plane, so killing and restarting it is a real restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from opharness import GROUP, PLURAL, Models, chart_operator

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "optimizedmodel.yaml"


@pytest.fixture(scope="session")
def crd(cluster):
    """The generated CRD, installed and Established."""
    cluster.kubectl("apply", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{PLURAL}.{GROUP}")
    return f"{PLURAL}.{GROUP}"


@pytest.fixture
def operator_env(namespace):
    """Settings of the operator under test (tests may extend before starting it)."""
    return {
        "OPTIMODEL_NAMESPACES": namespace,
        "OPTIMODEL_ARTIFACT_ROOT": "s3://optimodel-artifacts/builds",
        "OPTIMODEL_ARTIFACT_CREDENTIALS_SECRET": "artifact-store",
        "OPTIMODEL_BUILDER_IMAGE": "registry.local/optimodel-builder:test",
        "OPTIMODEL_OPERATOR_IMAGE": "registry.local/optimodel-operator:test",
        "OPTIMODEL_TRITON_IMAGE": "registry.local/tritonserver:test",
    }


@pytest.fixture
def operator(cluster, crd, operator_env, namespace, tmp_path):
    """The operator in namespaced mode, watching the test's namespace (see ``chart_operator``)."""
    with chart_operator(cluster, namespace, [namespace], operator_env, tmp_path) as op:
        yield op


@pytest.fixture
def models(cluster, namespace) -> Models:
    return Models(cluster.api_client(), namespace)


