"""The end-to-end tier: the product installed with Helm on the real node, driven as a user would.

One stack per session (``hack/clusterstack.py``): MinIO on the node's bridge address with the
MiniLM weights uploaded, and the chart installed with the locally built images. Each test
applies its own OptimizedModel in its own restricted namespace.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import clusterstack
import pytest


@dataclass
class Stack:
    cluster: object  # conftest.Cluster with the real node
    store: clusterstack.ObjectStore
    model_uri: str
    install: clusterstack.Install
    prometheus: clusterstack.HostProcess
    adapter: clusterstack.HostProcess
    state: object  # localcluster.ClusterState

    def api(self):
        return self.cluster.api_client()

    def new_namespace(self) -> str:
        return clusterstack.model_namespace(self.api(), f"e2e-{uuid.uuid4().hex[:6]}", self.store)


@pytest.fixture
def model_namespace(stack):
    """A restricted namespace with the artifact-store Secret; deleted (with its Triton pods, so
    the next test has the node's CPU) after the test."""
    from kubernetes import client

    ns = stack.new_namespace()
    yield ns
    core = client.CoreV1Api(stack.api())
    core.delete_namespace(ns)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(ns).items
        if not pods:
            break
        time.sleep(1)


@pytest.fixture(scope="session")
def stack(node_cluster):
    import localcluster

    state = localcluster.ClusterState.load(node_cluster.state_dir)
    store = clusterstack.start_object_store()
    prometheus = adapter = None
    try:
        uri = clusterstack.upload_minilm(store)
        prometheus = clusterstack.start_prometheus(state, node_cluster.api_client())
        adapter = clusterstack.start_prometheus_adapter(state, prometheus, node_cluster.api_client())
        install = clusterstack.helm_install(node_cluster.kubeconfig, node_cluster.bin_dir / "helm",
                                            clusterstack.chart_values(node_cluster.images, prometheus.url))
        yield Stack(node_cluster, store, uri, install, prometheus, adapter, state)
    finally:
        for component in (adapter, prometheus):
            if component:
                component.stop()
        store.stop()


@dataclass
class LoopInputs:
    request_body: bytes


@pytest.fixture(scope="session")
def loop() -> LoopInputs:
    from optimodel.serving.demo import minilm_dir

    return LoopInputs(clusterstack.minilm_request(minilm_dir(), "A queue builds up when requests arrive faster."))


@pytest.fixture(scope="session")
def keda(stack):
    """The real KEDA (operator + metrics API server) on the same cluster, started on demand."""
    import keda as keda_module  # hack/keda.py

    running = keda_module.start_keda(stack.state, stack.api())
    try:
        yield running
    finally:
        running.stop()

