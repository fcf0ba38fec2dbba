"""Fixtures for running the real operator (``optimodel operator`` as a subprocess, exactly as in
its container) against the real control plane, so killing and restarting it is a real restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from chart import install_operator_rbac, token_kubeconfig, uninstall_operator_rbac
from opharness import GROUP, PLURAL, Models, OperatorProcess

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
    """The operator, authenticated as the Helm chart's ServiceAccount with the chart's RBAC.

    Every operator test therefore also proves that the chart's least-privilege permissions are
    enough (namespaced mode: a Role in the watched namespace plus the small CRD-lookup
    ClusterRole). The token is a real TokenRequest token, not impersonation.
    """
    username = install_operator_rbac(cluster, namespace, [namespace])
    kubeconfig = token_kubeconfig(cluster, username, tmp_path / "operator.kubeconfig")
    op = OperatorProcess(kubeconfig, operator_env, tmp_path / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()
        uninstall_operator_rbac(cluster, namespace)
        print(f"--- operator log tail ({op.log_path}) ---\n{op.log_tail()}")  # shown on failure


@pytest.fixture
def models(cluster, namespace) -> Models:
    return Models(cluster.api_client(), namespace)


