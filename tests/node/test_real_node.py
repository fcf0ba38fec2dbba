"""Real pods on the real node: the project's images run under containerd, runc and a kubelet.

kwok only pretends; here every claim is observed on a real process: the operator image runs
`optimodel crd` in a namespace enforcing Pod Security `restricted`, a readiness probe really
probes (a wrong port keeps a pod unready), a Service really routes through kube-proxy and
balances over two pods, a termination message really comes from the container's file, and
deleting a pod really ends its processes.
"""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest
import realnode
from realpods import WHOAMI, on_real_node, processes_with
from kubernetes import client
from polling import wait_for

pytestmark = pytest.mark.node


def _pod_phase(core, ns, name):
    return core.read_namespaced_pod(name, ns).status.phase


def test_real_node_is_ready_with_containerd_and_labelled(node_cluster):
    node = client.CoreV1Api(node_cluster.api_client()).read_node(realnode.NODE_NAME)
    ready = {c.type: c.status for c in node.status.conditions}["Ready"]
    assert ready == "True"
    assert node.status.node_info.container_runtime_version.startswith("containerd://1.6.")
    assert node.status.node_info.kubelet_version == "v1.34.4"
    assert all(node.metadata.labels.get(k) == v for k, v in realnode.NODE_LABELS.items())
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [
        (realnode.NODE_TAINT["key"], realnode.NODE_TAINT["value"], realnode.NODE_TAINT["effect"])]
    addresses = {a.type: a.address for a in node.status.addresses}
    assert addresses["InternalIP"] == realnode.NODE_IP


def test_operator_image_runs_crd_in_a_restricted_namespace(node_cluster, node_namespace):
    core = client.CoreV1Api(node_cluster.api_client())
    name = "crd"
    core.create_namespaced_pod(node_namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": on_real_node([{"name": "crd", "image": node_cluster.images["operator"], "args": ["crd"]}],
                             restartPolicy="Never"),
    })
    wait_for(lambda: _pod_phase(core, node_namespace, name) in ("Succeeded", "Failed"), timeout=120,
             what="the crd pod to finish")
    pod = core.read_namespaced_pod(name, node_namespace)
    terminated = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, terminated.exit_code) == ("Succeeded", 0), terminated
    assert pod.spec.node_name == realnode.NODE_NAME
    # kubectl logs goes API server -> kubelet (client certificate, webhook authorization).
    logs = node_cluster.kubectl("logs", "-n", node_namespace, name).stdout
    assert "kind: CustomResourceDefinition" in logs and "optimizedmodels.optimodel.dev" in logs


def _whoami_deployment(ns: str, image: str, name: str, replicas: int, probe_port: int) -> dict:
    container = {
        "name": "web", "image": image, "command": ["python3", "-c", WHOAMI],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": probe_port}, "periodSeconds": 1},
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": on_real_node([container], terminationGracePeriodSeconds=2)}},
    }


def test_readiness_probe_and_service_are_real(node_cluster, node_namespace):
    api = node_cluster.api_client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    image = node_cluster.images["operator"]
    apps.create_namespaced_deployment(node_namespace, _whoami_deployment(node_namespace, image, "web", 2, 8080))
    # The same server probed on a port nothing listens on: running, never ready.
    apps.create_namespaced_deployment(node_namespace, _whoami_deployment(node_namespace, image, "wrong", 1, 9999))
    core.create_namespaced_service(node_namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
    })
    wait_for(lambda: (apps.read_namespaced_deployment("web", node_namespace).status.ready_replicas or 0) == 2,
             timeout=120, what="both web pods Ready through their readiness probes")
    pods = core.list_namespaced_pod(node_namespace, label_selector="app=web").items
    names = {p.metadata.name for p in pods}
    # The pod IP answers from the host on the bridge.
    ip = pods[0].status.pod_ip
    assert ip.startswith("10.250.0.")
    assert urllib.request.urlopen(f"http://{ip}:8080/", timeout=5).read().decode() == pods[0].metadata.name
    # The ClusterIP answers through kube-proxy's rules and reaches both pods.
    cluster_ip = core.read_namespaced_service("web", node_namespace).spec.cluster_ip
    seen: set[str] = set()

    def both_answer():
        try:
            seen.add(urllib.request.urlopen(f"http://{cluster_ip}:80/", timeout=2).read().decode())
        except OSError:
            pass
        return seen == names

    wait_for(both_answer, timeout=60, interval=0.05, what=f"the Service {cluster_ip} to reach {names}")
    # The kubelet probes the wrong port every second: the container runs, is never ready, and the
    # failures show up as Events (waited for: the first probe may not have run yet).
    wrong = core.list_namespaced_pod(node_namespace, label_selector="app=wrong").items[0]

    def probe_failed():
        events = core.list_namespaced_event(node_namespace,
                                            field_selector=f"involvedObject.name={wrong.metadata.name}")
        return any(e.reason == "Unhealthy" and "Readiness probe failed" in e.message for e in events.items)

    wait_for(probe_failed, timeout=60, interval=0.5, what="a readiness-probe failure Event for the wrong port")
    statuses = core.read_namespaced_pod(wrong.metadata.name, node_namespace).status.container_statuses or []
    assert statuses and statuses[0].state.running is not None and statuses[0].ready is False


def test_job_termination_message_reaches_the_api(node_cluster, node_namespace):
    batch, core = client.BatchV1Api(node_cluster.api_client()), client.CoreV1Api(node_cluster.api_client())
    summary = {"reason": "Succeeded", "key": uuid.uuid4().hex}
    script = f"open('/dev/termination-log', 'w').write({json.dumps(json.dumps(summary))})"
    batch.create_namespaced_job(node_namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "report"},
        "spec": {"backoffLimit": 0, "template": {"spec": on_real_node(
            [{"name": "main", "image": node_cluster.images["operator"], "command": ["python3", "-c", script],
              "terminationMessagePath": "/dev/termination-log"}], restartPolicy="Never")}},
    })
    wait_for(lambda: (batch.read_namespaced_job("report", node_namespace).status.succeeded or 0) == 1,
             timeout=120, what="the Job to succeed")
    pod = core.list_namespaced_pod(node_namespace, label_selector="job-name=report").items[0]
    assert json.loads(pod.status.container_statuses[0].state.terminated.message) == summary


def test_deleting_a_pod_ends_its_processes(node_cluster, node_namespace):
    core = client.CoreV1Api(node_cluster.api_client())
    marker = f"optimodel-marker-{uuid.uuid4().hex}"
    core.create_namespaced_pod(node_namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
        "spec": on_real_node([{"name": "main", "image": node_cluster.images["operator"],
                               "command": ["python3", "-c", "import time\nwhile True: time.sleep(1)", marker]}],
                             terminationGracePeriodSeconds=1),
    })
    pids = wait_for(lambda: processes_with(marker), timeout=120, what="the container's process on the host")
    core.delete_namespaced_pod("sleeper", node_namespace)
    wait_for(lambda: not processes_with(marker), timeout=30, what=f"processes {pids} to end")

    def gone():
        try:
            core.read_namespaced_pod("sleeper", node_namespace)
            return False
        except client.ApiException as err:
            return err.status == 404

    wait_for(gone, timeout=30, what="the pod object to be removed after the kubelet confirmed")
