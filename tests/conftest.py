"""Session fixtures shared by every test tier.

The control plane is real: etcd, kube-apiserver, controller-manager, scheduler and kwok, started
once per session by ``hack/localcluster.py`` (or reused when ``OPTIMODEL_TEST_KUBECONFIG`` points
at a running one). Each test gets its own namespace with Pod Security ``restricted`` enforced.
In CI (``CI=true``) a missing binary or a control plane that fails to start is a failure, never
a skip: a green run must mean the integration tests ran.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import localcluster  # hack/localcluster.py (pytest's pythonpath includes hack/)
import pytest
from testcluster import Cluster, make_namespace, start_control_plane, unavailable  # tests/support


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Cluster:
    """A running control plane for the whole session; stopped and removed at the end."""
    external = os.environ.get("OPTIMODEL_TEST_KUBECONFIG")
    if external:
        yield Cluster(external, localcluster.binary_dir(), None)
        return
    bin_dir, state_dir, state = start_control_plane("optimodel-cluster-")
    print(f"\n[cluster] control plane ready in {state.ready_seconds:.1f}s (cached binaries)")
    try:
        yield Cluster(state.kubeconfig, bin_dir, state.ready_seconds)
    finally:
        localcluster.down(state_dir)


@pytest.fixture(scope="session")
def node_cluster() -> Cluster:
    """A second control plane with a *real* kubelet node (containerd, runc, bridge CNI,
    kube-proxy) and the project's images imported into it, for the tiers that run real pods.

    Separate from ``cluster`` so that the kwok-only tiers never depend on the container runtime.
    In CI a missing runtime piece (containerd, runc, CNI plugins, kubelet, images) fails.
    """
    import realnode

    missing = realnode.missing_host_pieces()
    if missing:
        unavailable("real node", f"missing {', '.join(missing)}; {realnode.INSTALL_HINT}")
    try:
        bin_dir = localcluster.ensure_binaries(real_node=True)
    except Exception as err:  # noqa: BLE001
        unavailable("kubelet/kube-proxy binaries", err)
    state_dir = Path(tempfile.mkdtemp(prefix="optimodel-node-"))
    try:
        state = localcluster.up(state_dir, timeout=240, real_node=True)
    except Exception as err:  # noqa: BLE001
        logs = state_dir / "logs"
        tails = "".join(f"\n--- {p.name} ---\n{p.read_text(errors='replace')[-1500:]}"
                        for p in sorted(logs.glob("*.log"))) if logs.is_dir() else ""
        shutil.rmtree(state_dir, ignore_errors=True)
        unavailable("control plane with a real node", f"{err}{tails}")
    print(f"\n[node-cluster] control plane + real node ready in {state.ready_seconds:.1f}s")
    try:
        yield Cluster(state.kubeconfig, bin_dir, state.ready_seconds, state.images, state_dir)
    finally:
        localcluster.down(state_dir)


@pytest.fixture
def namespace(cluster: Cluster) -> str:
    """A fresh namespace with Pod Security `restricted` enforced; deleted after the test."""
    from kubernetes import client

    name = make_namespace(cluster)
    yield name
    client.CoreV1Api(cluster.api_client()).delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def node_namespace(node_cluster: Cluster) -> str:
    """Like ``namespace``, on the cluster with the real node."""
    from kubernetes import client

    name = make_namespace(node_cluster)
    yield name
    client.CoreV1Api(node_cluster.api_client()).delete_namespace(name, propagation_policy="Background")


@pytest.fixture(scope="session")
def object_store():
    """A real S3-compatible server (MinIO) on 127.0.0.1 for the session; stopped at the end.

    The same store the end-to-end tier runs on the node's address (``hack/clusterstack.py``).
    """
    import clusterstack  # hack/clusterstack.py

    try:
        store = clusterstack.start_object_store(host="127.0.0.1")
    except Exception as err:  # noqa: BLE001
        unavailable("object store (MinIO; run hack/install-minio.sh)", err)
    try:
        yield store
    finally:
        store.stop()
