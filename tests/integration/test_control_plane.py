"""Proof that the local control plane is real: scheduling, controllers, admission, CEL, GC.

Each test exercises one behaviour the operator relies on and that a mock could not prove.
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from polling import wait_for

pytestmark = pytest.mark.cluster

RESTRICTED_CONTAINER = {
    "name": "app",
    "image": "registry.example/app:1",
    "securityContext": {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
}


def test_server_and_kubectl_report_the_pinned_version(cluster):
    info = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert info["serverVersion"]["gitVersion"] == "v1.34.4"
    assert info["clientVersion"]["gitVersion"] == "v1.34.4"


def test_gpu_pools_are_labelled_tainted_and_allocatable(cluster):
    nodes = client.CoreV1Api(cluster.api_client()).list_node(label_selector="type=kwok").items
    products = {n.metadata.labels.get("nvidia.com/gpu.product") for n in nodes}
    assert {"NVIDIA-H100-80GB-HBM3", "NVIDIA-L4", None} <= products
    for node in nodes:
        if node.metadata.labels.get("nvidia.com/gpu.product"):
            assert int(node.status.allocatable["nvidia.com/gpu"]) > 0
            assert any(t.key == "nvidia.com/gpu" and t.effect == "NoSchedule" for t in node.spec.taints)
        else:
            assert "nvidia.com/gpu" not in (node.status.allocatable or {})


def test_deployment_pods_land_on_kwok_gpu_nodes_and_become_ready(cluster, namespace):
    apps = client.AppsV1Api(cluster.api_client())
    container = {**RESTRICTED_CONTAINER, "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    apps.create_namespaced_deployment(namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "containers": [container],
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            }},
        },
    })
    wait_for(lambda: (apps.read_namespaced_deployment("web", namespace).status.ready_replicas or 0) == 2,
             what="2 ready replicas")
    pods = client.CoreV1Api(cluster.api_client()).list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 2
    assert all(p.spec.node_name.startswith("kwok-l4-") for p in pods)
    assert all(p.status.phase == "Running" for p in pods)


def test_untolerated_gpu_pod_is_not_scheduled_on_gpu_nodes(cluster, namespace):
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [RESTRICTED_CONTAINER],
                 "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
    })
    def unschedulable():
        conds = core.read_namespaced_pod("p", namespace).status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conds)
    wait_for(unschedulable, what="pod to be reported Unschedulable (GPU taint)")


def test_job_completes(cluster, namespace):
    batch = client.BatchV1Api(cluster.api_client())
    batch.create_namespaced_job(namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never", "containers": [RESTRICTED_CONTAINER]}}},
    })
    wait_for(lambda: (batch.read_namespaced_job("once", namespace).status.succeeded or 0) == 1,
             what="Job success")


def test_privileged_pod_refused_in_restricted_namespace_only(cluster, namespace):
    core = client.CoreV1Api(cluster.api_client())
    privileged = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "priv"},
        "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]},
    }
    with pytest.raises(client.ApiException) as err:
        core.create_namespaced_pod(namespace, privileged)
    assert err.value.status == 403
    message = json.loads(err.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    assert 'privileged (container "c" must not set securityContext.privileged=true)' in message
    # The same pod is a legal object elsewhere: it is Pod Security admission that refused it.
    other = f"{namespace}-open"
    core.create_namespace({"metadata": {"name": other}})
    try:
        wait_for(lambda: _has_default_sa(core, other), what="default ServiceAccount")
        core.create_namespaced_pod(other, privileged)
    finally:
        core.delete_namespace(other)


def _has_default_sa(core, ns: str) -> bool:
    try:
        core.read_namespaced_service_account("default", ns)
        return True
    except client.ApiException:
        return False


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.optimodel.dev"},
    "spec": {
        "group": "test.optimodel.dev",
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {
                "type": "object",
                "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                "x-kubernetes-validations": [
                    {"rule": "self.min <= self.max", "message": "min must not exceed max"}],
            }}}},
        }],
    },
}


def test_crd_cel_rule_refuses_bad_object_with_its_message(cluster, namespace):
    api = cluster.api_client()
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except client.ApiException as err:
        assert err.status == 409
    def established():
        conds = ext.read_custom_resource_definition("widgets.test.optimodel.dev").status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conds)
    wait_for(established, what="CRD Established")
    custom = client.CustomObjectsApi(api)
    body = lambda name, lo, hi: {"apiVersion": "test.optimodel.dev/v1", "kind": "Widget",
                                 "metadata": {"name": name}, "spec": {"min": lo, "max": hi}}
    wait_for(lambda: _try_create(custom, namespace, body("good", 1, 2)), what="good Widget accepted")
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object("test.optimodel.dev", "v1", namespace, "widgets", body("bad", 3, 2))
    assert err.value.status == 422
    assert "min must not exceed max" in err.value.body


def _try_create(custom, namespace, body) -> bool:
    try:
        custom.create_namespaced_custom_object("test.optimodel.dev", "v1", namespace, "widgets", body)
        return True
    except client.ApiException as err:
        if err.status == 404:  # discovery not yet updated
            return False
        raise


def test_deleting_owner_garbage_collects_child(cluster, namespace):
    core = client.CoreV1Api(cluster.api_client())
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(namespace, {"metadata": {
        "name": "child",
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                             "uid": owner.metadata.uid, "controller": True,
                             "blockOwnerDeletion": True}],
    }})
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")
    def child_gone():
        try:
            core.read_namespaced_config_map("child", namespace)
            return False
        except client.ApiException as err:
            return err.status == 404
    wait_for(child_gone, timeout=60, what="garbage collection of the child")
