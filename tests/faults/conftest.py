"""The fault tier: the operator converging 20+ models while the control plane misbehaves.

A dedicated control plane: its API server and etcd are restarted by the tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import localcluster
import pytest
from kubernetes import client
from testcluster import Cluster, make_namespace, start_control_plane

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fault_cluster():
    """A control plane of its own: restarting its API server or etcd disturbs no other test."""
    bin_dir, state_dir, state = start_control_plane("optimodel-faults-")
    try:
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
