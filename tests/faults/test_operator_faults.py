"""Fault scenarios on the real control plane, each with 20 models converging at once.

After each scenario every model must be Ready with a complete status, with exactly one build Job
and one Deployment per model (no duplicates, nothing lost). The time to converge is measured and
printed (``[faults]`` lines), never asserted: it depends on the machine.

- a fault-injecting proxy between the operator and the API server (5xx, 429, resets, lost
  responses, latency, cut watches);
- an API server restart, and an etcd restart, while the models converge;
- SIGKILL of the leader of two replicas at random points, three times.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import localcluster
import pytest
from chart import install_operator_rbac, release_name, token_kubeconfig, uninstall_operator_rbac
from faultproxy import FaultProxy, proxied_kubeconfig
from kubernetes import client
from opharness import GROUP, PLURAL, VERSION, BuildKubelet, OperatorProcess, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.faults]

MODELS = 20
SPEC = {
    "model": {"uri": "s3://models/minilm/", "format": "huggingface"},
    # Served on CPU: the kwok CPU pool holds all 20 Triton pods (the GPU pools hold 8-16 GPUs).
    "serving": {"gpu": {"count": 0}},
    "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "engine": "hpa"},
}
OPERATOR_ENV = {
    "OPTIMODEL_ARTIFACT_ROOT": "s3://optimodel-artifacts/builds",
    "OPTIMODEL_ARTIFACT_CREDENTIALS_SECRET": "artifact-store",
    "OPTIMODEL_BUILDER_IMAGE": "registry.local/optimodel-builder:test",
    "OPTIMODEL_OPERATOR_IMAGE": "registry.local/optimodel-operator:test",
    "OPTIMODEL_TRITON_IMAGE": "registry.local/tritonserver:test",
    # Small pods, so that 20 Triton pods and 20 builders fit the kwok CPU pool.
    "OPTIMODEL_BUILDER_CPU": "100m", "OPTIMODEL_BUILDER_MEMORY": "256Mi",
    "OPTIMODEL_TRITON_CPU": "100m", "OPTIMODEL_TRITON_MEMORY": "256Mi",
    "OPTIMODEL_RETRY_MAX_SECONDS": "8",
}
CONVERGE_TIMEOUT = 300


class Scenario:
    """One fault scenario's namespace, operator credentials and measurements."""

    def __init__(self, cluster, namespace: str, tmp_path):
        self.cluster, self.namespace, self.tmp_path = cluster, namespace, tmp_path
        self.api = cluster.api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        username = install_operator_rbac(cluster, namespace, [namespace])
        self.kubeconfig = token_kubeconfig(cluster, username, tmp_path / "operator.kubeconfig")
        self.kubelet = BuildKubelet(self.api, namespace)
        self.operators: list[OperatorProcess] = []

    def operator(self, kubeconfig: str | None = None, **env: str) -> OperatorProcess:
        name = f"operator-{len(self.operators)}"
        op = OperatorProcess(kubeconfig or self.kubeconfig,
                             {**OPERATOR_ENV, "OPTIMODEL_NAMESPACES": self.namespace, "POD_NAME": name, **env},
                             self.tmp_path / f"{name}.log")
        op.start()
        self.operators.append(op)
        return op

    def create_models(self) -> float:
        """Create the models concurrently (retrying each create through API trouble); start time."""
        started = time.monotonic()

        def create(i: int) -> None:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OptimizedModel",
                    "metadata": {"name": f"m{i:02d}"}, "spec": SPEC}
            deadline = time.monotonic() + 120
            while True:
                try:
                    self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)
                    return
                except client.ApiException as err:
                    if err.status == 409:
                        return
                    if time.monotonic() > deadline:
                        raise
                except Exception:  # noqa: BLE001 - API server down mid-restart
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.5)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(MODELS)))
        return started

    def phases(self) -> dict[str, str]:
        try:
            items = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]
        except Exception:  # noqa: BLE001 - API down: not converged yet
            return {}
        return {m["metadata"]["name"]: (m.get("status") or {}).get("phase", "") for m in items}

    def wait_converged(self, started: float, label: str) -> float:
        def converged():
            phases = self.phases()
            return len(phases) == MODELS and all(p == "Ready" for p in phases.values())
        try:
            wait_for(converged, timeout=CONVERGE_TIMEOUT, interval=0.5, what=f"{MODELS} models Ready ({label})")
        except AssertionError:
            raise AssertionError(f"{label}: not converged: {sorted(self.phases().items())}") from None
        seconds = time.monotonic() - started
        print(f"\n[faults] {label}: {MODELS} models Ready {seconds:.1f}s after the first create")
        return seconds

    def assert_nothing_lost_or_duplicated(self) -> None:
        jobs = self.batch.list_namespaced_job(self.namespace, label_selector="app.kubernetes.io/component=builder").items
        per_model: dict[str, list[str]] = {}
        for job in jobs:
            per_model.setdefault(job.metadata.labels["optimodel.dev/model"], []).append(job.metadata.name)
        assert len(per_model) == MODELS and all(len(v) == 1 for v in per_model.values()), per_model
        deployments = self.apps.list_namespaced_deployment(self.namespace).items
        assert sorted(d.metadata.name for d in deployments) == sorted(f"m{i:02d}" for i in range(MODELS))
        for item in self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)["items"]:
            status = item["status"]
            name = item["metadata"]["name"]
            assert status["engine"]["precision"] == "int8", name
            assert status["benchmark"]["speedup"] == pytest.approx(2.7), name
            types = {c["type"]: c["status"] for c in status["conditions"]}
            assert types == {"Built": "True", "Deployed": "True", "Ready": "True", "Autoscaling": "True",
                             "Synced": "True"}, (name, types)
            assert status["observedGeneration"] == item["metadata"]["generation"], name

    def close(self) -> None:
        """Stop everything this scenario started, whatever fails on the way."""
        try:
            self.kubelet.stop()
        finally:
            for op in self.operators:
                op.stop()
                print(f"--- {op.log_path.name} tail ---\n{op.log_tail(1500)}")
            uninstall_operator_rbac(self.cluster, self.namespace)


@pytest.fixture
def scenario(fault_cluster, fault_namespace, tmp_path):
    s = Scenario(fault_cluster, fault_namespace, tmp_path)
    s.kubelet.start()
    try:
        yield s
    finally:
        s.close()


def test_api_faults_between_operator_and_api_server(scenario, fault_cluster, tmp_path):
    proxy = FaultProxy(scenario.kubeconfig, seed=11, error_rate=0.15, throttle_rate=0.05, reset_rate=0.03,
                       lost_response_rate=0.03, latency=0.1, drop_watch_after=8.0).start()
    try:
        kubeconfig = proxied_kubeconfig(scenario.kubeconfig, proxy.url, str(tmp_path / "proxied.kubeconfig"))
        op = scenario.operator(kubeconfig)
        started = scenario.create_models()
        scenario.wait_converged(started, "API faults (15% 5xx, 5% 429, 3% resets, 3% lost "
                                         "responses, 0-100 ms latency, watches cut within 8 s)")
        counters = proxy.counters
    finally:
        proxy.stop()
    print(f"[faults] injected: {counters}")
    assert counters["errors"] > 20 and counters["throttles"] > 5 and counters["watch_drops"] > 2, counters
    assert op.metric("optimodel_api_retries_total", reason="HTTP") > 0
    scenario.assert_nothing_lost_or_duplicated()


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_control_plane_restart_while_converging(scenario, fault_cluster, component):
    scenario.operator()
    started = scenario.create_models()
    time.sleep(2)  # mid-convergence: some builds done, some Deployments created
    before = localcluster.ClusterState.load(fault_cluster.state_dir).pids[component]
    after = localcluster.restart(fault_cluster.state_dir, component, down_seconds=3).pids[component]
    assert after != before, f"{component} was not restarted"
    scenario.wait_converged(started, f"{component} restarted (3 s down) 2 s after the creates")
    scenario.assert_nothing_lost_or_duplicated()


def test_sigkill_of_the_leader_at_random_points(scenario, fault_cluster, fault_namespace):
    lease = {"OPTIMODEL_LEADER_ELECTION": "true", "OPTIMODEL_LEADER_ELECTION_NAMESPACE": fault_namespace,
             "OPTIMODEL_LEADER_ELECTION_LEASE_NAME": release_name(fault_namespace),
             "OPTIMODEL_LEASE_DURATION_SECONDS": "5", "OPTIMODEL_RENEW_DEADLINE_SECONDS": "3",
             "OPTIMODEL_LEASE_RETRY_SECONDS": "1"}
    replicas = [scenario.operator(**lease), scenario.operator(**lease)]
    coordination = client.CoordinationV1Api(scenario.api)

    def leader() -> OperatorProcess | None:
        try:
            holder = coordination.read_namespaced_lease(release_name(fault_namespace), fault_namespace).spec.holder_identity
        except client.ApiException:
            return None
        return next((op for op in replicas if op.env["POD_NAME"] == holder and op.proc.poll() is None), None)

    wait_for(leader, timeout=30, what="a leader")
    rng = random.Random(5)
    started = scenario.create_models()
    kills, failovers = [], []
    for _ in range(3):
        time.sleep(rng.uniform(0.5, 3.0))
        current = wait_for(leader, timeout=30, what="a live leader")
        current.kill()
        killed = time.monotonic()
        kills.append(round(killed - started, 1))
        # The other replica takes over once the Lease expires; only then does the killed one come
        # back (as a standby: a restart under the same identity would simply resume the Lease).
        wait_for(lambda: (lambda op: op if op is not None and op is not current else None)(leader()),
                 timeout=30, what="the standby takes over")
        failovers.append(round(time.monotonic() - killed, 1))
        current.start()
    scenario.wait_converged(started, f"leader SIGKILLed at {kills} s, failovers {failovers} s (lease 5 s)")
    scenario.assert_nothing_lost_or_duplicated()
    transitions = coordination.read_namespaced_lease(release_name(fault_namespace), fault_namespace).spec.lease_transitions
    assert transitions >= 3, f"the Lease changed hands {transitions} times for 3 kills"
