"""The fault tier: the operator converging 20+ models while the control plane misbehaves.

A dedicated control plane: its API server and etcd are restarted by the tests.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import localcluster
import pytest
from kubernetes import client
from testcluster import IN_CI, Cluster, make_namespace

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fault_cluster():
    """A control plane of its own: restarting its API server or etcd disturbs no other test."""
    try:
        bin_dir = localcluster.ensure_binaries()
    except Exception as err:  # noqa: BLE001
        if IN_CI:
            pytest.fail(f"control-plane binaries unavailable in CI: {err}")
        pytest.skip(f"control-plane binaries unavailable: {err}")
    state_dir = Path(tempfile.mkdtemp(prefix="optimodel-faults-"))
    try:
        state = localcluster.up(state_dir)
        cluster = Cluster(state.kubeconfig, bin_dir, state.ready_seconds, state_dir=state_dir)
        cluster.kubectl("apply", "-f", str(REPO / "crds" / "optimizedmodel.yaml"))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        "crd/optimizedmodels.optimodel.dev")
        yield cluster
    finally:
        localcluster.down(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def fault_namespace(fault_cluster) -> str:
    name = make_namespace(fault_cluster)
    yield name
    client.CoreV1Api(fault_cluster.api_client()).delete_namespace(name, propagation_policy="Background")
