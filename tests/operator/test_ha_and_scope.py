"""Two replicas with Lease leader election (only the leader acts; failover is measured), and the
chart's default cluster-wide mode (the operator watches every namespace with a ClusterRole)."""

from __future__ import annotations

import time

import pytest
from chart import install_operator_rbac, release_name, token_kubeconfig, uninstall_operator_rbac
from kubernetes import client
from opharness import OperatorProcess, chart_operator, success_summary, wait_for

from optimodel.operator import manifests

pytestmark = pytest.mark.cluster

SPEC = {
    "model": {"uri": "s3://models/minilm/", "format": "huggingface"},
    "serving": {"gpu": {"product": "NVIDIA-L4"}},
    "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "engine": "hpa"},
}
LEASE = {"OPTIMODEL_LEASE_DURATION_SECONDS": "6", "OPTIMODEL_RENEW_DEADLINE_SECONDS": "4",
         "OPTIMODEL_LEASE_RETRY_SECONDS": "1"}


def serve(models, name: str) -> None:
    models.create(name, SPEC)
    job = wait_for(lambda: next((j for j in models.jobs() if j.metadata.labels[manifests.MODEL_LABEL] == name),
                                None), timeout=30, what=f"build Job of {name}")
    models.finish_build(job.metadata.name, success_summary(job.metadata.annotations[manifests.KEY_ANNOTATION], name))
    wait_for(lambda: models.status(name).get("phase") == "Ready", timeout=60, what=f"{name} Ready")


@pytest.fixture
def replicas(cluster, crd, operator_env, namespace, tmp_path):
    """Two operator processes as the chart runs them: same ServiceAccount, same Lease."""
    username = install_operator_rbac(cluster, namespace, [namespace])
    kubeconfig = token_kubeconfig(cluster, username, tmp_path / "operator.kubeconfig")
    env = {**operator_env, **LEASE, "OPTIMODEL_LEADER_ELECTION": "true",
           "OPTIMODEL_LEADER_ELECTION_NAMESPACE": namespace,
           "OPTIMODEL_LEADER_ELECTION_LEASE_NAME": release_name(namespace)}
    procs = {name: OperatorProcess(kubeconfig, {**env, "POD_NAME": name}, tmp_path / f"{name}.log")
             for name in ("replica-a", "replica-b")}
    for proc in procs.values():
        proc.start()
    try:
        yield procs
    finally:
        for name, proc in procs.items():
            proc.stop()
            print(f"--- {name} log tail ---\n{proc.log_tail(2500)}")
        uninstall_operator_rbac(cluster, namespace)


def holder(cluster, namespace) -> str | None:
    try:
        lease = client.CoordinationV1Api(cluster.api_client()).read_namespaced_lease(
            release_name(namespace), namespace)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise
    return lease.spec.holder_identity


def test_only_the_leader_acts_and_a_standby_takes_over_after_sigkill(cluster, models, replicas, namespace):
    leader_name = wait_for(lambda: holder(cluster, namespace), timeout=30, what="a Lease holder")
    leader = replicas[leader_name]
    (standby_name,) = [n for n in replicas if n != leader_name]
    standby = replicas[standby_name]
    for i in range(3):
        serve(models, f"m{i}")
    assert leader.metric("optimodel_reconcile_total", result="ok") > 0
    assert standby.metric("optimodel_reconcile_total", result="ok") == 0, "a standby must not act"
    assert (leader.metric("optimodel_leader"), standby.metric("optimodel_leader")) == (1, 0)

    killed = time.monotonic()
    leader.kill()
    models.create("after-failover", SPEC)  # arrives while nobody leads
    wait_for(lambda: holder(cluster, namespace) == standby_name, timeout=30, what="standby takes the Lease")
    took_over = time.monotonic() - killed
    job = wait_for(lambda: next((j for j in models.jobs()
                                 if j.metadata.labels[manifests.MODEL_LABEL] == "after-failover"), None),
                   timeout=30, what="the new leader builds the model created during failover")
    acted = time.monotonic() - killed
    models.finish_build(job.metadata.name, success_summary(job.metadata.annotations[manifests.KEY_ANNOTATION],
                                                           "after-failover"))
    wait_for(lambda: models.status("after-failover").get("phase") == "Ready", timeout=60, what="Ready")
    print(f"[ha] failover: Lease taken {took_over:.1f}s and first Job created {acted:.1f}s after SIGKILL "
          f"of the leader (lease duration {LEASE['OPTIMODEL_LEASE_DURATION_SECONDS']}s)")
    names = [j.metadata.name for j in models.jobs()]
    assert len(names) == len(set(names)) == 4, names  # one build per model, none duplicated
    for i in range(3):
        assert models.status(f"m{i}")["phase"] == "Ready"
    # The restarted old leader stands by.
    leader.start()
    time.sleep(3)
    assert holder(cluster, namespace) == standby_name
    assert leader.metric("optimodel_reconcile_total", result="ok") == 0


@pytest.fixture
def clusterwide_operator(cluster, crd, operator_env, namespace, tmp_path):
    """The chart's default: no watchNamespaces, a ClusterRole, every namespace watched."""
    with chart_operator(cluster, namespace, None, {**operator_env, "OPTIMODEL_NAMESPACES": ""}, tmp_path) as op:
        yield op


def test_cluster_wide_mode_builds_and_serves(models, clusterwide_operator, namespace):
    serve(models, "minilm")
    status = models.status("minilm")
    assert status["conditions"] and status["endpoint"].startswith(f"http://minilm.{namespace}.svc")
    assert clusterwide_operator.metric("optimodel_builds_total", event="created") == 1
