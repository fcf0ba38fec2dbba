"""The loop the product exists for, closed on a real node: load raises Triton's queue depth,
Prometheus scrapes it, prometheus-adapter serves it to the HPA, replicas go up; load stops,
replicas go back to the minimum. And what users feel during changes: an optimization edit
rolls out, a build that fails its gate changes nothing, a deleted pod drains, and not one
request fails in any of them.
"""

from __future__ import annotations

import time

import clusterstack
import pytest
from kubernetes import client
from polling import wait_for

pytestmark = [pytest.mark.node, pytest.mark.slow]

GROUP, VERSION, PLURAL = "optimodel.dev", "v1alpha1", "optimizedmodels"
# These tests are about serving, not compression: one FP32 candidate keeps each build short.
FAST = {"optimization.precision": "fp32"}


def _status(custom, ns, name) -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name).get("status") or {}


def _apply_and_wait_ready(stack, ns, manifest, timeout=900) -> dict:
    custom = client.CustomObjectsApi(stack.api())
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest)
    name = manifest["metadata"]["name"]
    return wait_for(lambda: (s := _status(custom, ns, name)).get("phase") == "Ready" and s,
                    timeout=timeout, interval=2, what=f"{ns}/{name} Ready")


def _scale_out_and_back(stack, loop, ns: str, hpa_name: str, metric_kind: str) -> float:
    """Load until a second pod is Ready, then quiet until replicas are back at the minimum.

    Returns the reaction time (load start -> second pod Ready). Asserts that the HPA acted on a
    measured value of the queue-depth metric and that no request failed.
    """
    api = stack.api()
    apps, scaling = client.AppsV1Api(api), client.AutoscalingV2Api(api)
    service_ip = client.CoreV1Api(api).read_namespaced_service("minilm", ns).spec.cluster_ip
    load = clusterstack.Load(service_ip, "minilm", loop.request_body, clients=12).start()
    t0 = time.monotonic()
    try:
        wait_for(lambda: (apps.read_namespaced_deployment("minilm", ns).status.ready_replicas or 0) >= 2,
                 timeout=240, interval=1, what="a second Triton pod Ready under load")
        reaction = time.monotonic() - t0
        # The HPA scaled on a value it read from the metrics API, not on a guess.
        status = scaling.read_namespaced_horizontal_pod_autoscaler(hpa_name, ns).status
        values = [getattr(m, metric_kind).current for m in status.current_metrics or [] if getattr(m, metric_kind)]
        assert values, status
    finally:
        load.stop()
    assert load.failures() == [], load.failures()[:5]
    wait_for(lambda: (apps.read_namespaced_deployment("minilm", ns).spec.replicas or 0) == 1,
             timeout=300, interval=2, what="replicas back to minReplicas after the load stopped")
    return reaction


def test_hpa_scales_out_on_queue_depth_and_back(stack, loop, model_namespace):
    ns = model_namespace
    _apply_and_wait_ready(stack, ns, clusterstack.minilm_model("minilm", stack.model_uri, **FAST))
    hpa = client.AutoscalingV2Api(stack.api()).read_namespaced_horizontal_pod_autoscaler("minilm", ns)
    assert hpa.spec.metrics[0].pods.metric.name == "nv_inference_pending_request_count"
    reaction = _scale_out_and_back(stack, loop, ns, "minilm", "pods")
    print(f"\n[e2e] HPA (prometheus-adapter): load start -> second pod Ready {reaction:.1f}s")


def test_keda_scales_out_on_queue_depth_and_back(stack, loop, keda, model_namespace):
    ns = model_namespace
    _apply_and_wait_ready(stack, ns, clusterstack.minilm_model("minilm", stack.model_uri,
                                                              **FAST, **{"autoscaling.engine": "keda"}))
    custom = client.CustomObjectsApi(stack.api())
    scaled = wait_for(lambda: (o := custom.get_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects",
                                                                         "minilm"))
                      and any(c["type"] == "Ready" and c["status"] == "True"
                              for c in (o.get("status") or {}).get("conditions") or []) and o,
                      timeout=60, what="KEDA to accept the operator's ScaledObject")
    assert scaled["spec"]["triggers"][0]["metadata"]["serverAddress"] == stack.prometheus.url
    reaction = _scale_out_and_back(stack, loop, ns, "keda-hpa-minilm", "external")
    print(f"\n[e2e] KEDA: load start -> second pod Ready {reaction:.1f}s")


def test_rollout_gate_failure_and_pod_deletion_lose_no_requests(stack, loop, model_namespace):
    api = stack.api()
    custom, apps, core = client.CustomObjectsApi(api), client.AppsV1Api(api), client.CoreV1Api(api)
    events = core
    ns = model_namespace
    manifest = clusterstack.minilm_model("minilm", stack.model_uri, **FAST, **{
        "autoscaling.minReplicas": 2, "autoscaling.maxReplicas": 2})
    first = _apply_and_wait_ready(stack, ns, manifest)
    wait_for(lambda: (apps.read_namespaced_deployment("minilm", ns).status.ready_replicas or 0) == 2,
             timeout=300, interval=1, what="two Triton pods Ready")
    service_ip = core.read_namespaced_service("minilm", ns).spec.cluster_ip
    load = clusterstack.Load(service_ip, "minilm", loop.request_body, clients=6).start()
    try:
        # 1. An optimization edit: new build key, new build, rolling update under load.
        t = time.monotonic()
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "minilm", {
            "spec": {"optimization": {"accuracy": {"threshold": 0.985}}}})
        rolled = wait_for(lambda: (s := _status(custom, ns, "minilm")).get("phase") == "Ready"
                          and s["engine"]["key"] != first["engine"]["key"] and s, timeout=900, interval=2,
                          what="the new engine built and rolled out")
        wait_for(lambda: _rolled_out(apps, ns), timeout=300, interval=1, what="the rollout to finish")
        rollout_failures = load.failures(since=t)
        # 2. A build that cannot pass its gate (max-abs 0: no compressed or exported graph is
        #    bit-exact): Built=False with the reason, a Warning Event, the old engine serving.
        t = time.monotonic()
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "minilm", {
            "spec": {"optimization": {"accuracy": {"metric": "max-abs", "threshold": 0}}}})
        failed = wait_for(lambda: (s := _status(custom, ns, "minilm")).get("phase") == "Failed" and s,
                          timeout=900, interval=2, what="the gate failure reported")
        built = next(c for c in failed["conditions"] if c["type"] == "Built")
        assert (built["status"], built["reason"]) == ("False", "BuildFailed"), built
        assert "AccuracyGateFailed" in built["message"]
        assert failed["engine"]["key"] == rolled["engine"]["key"]  # still serving the last good one
        warnings = events.list_namespaced_event(ns, field_selector="type=Warning").items
        assert any(e.reason == "BuildFailed" and "AccuracyGateFailed" in e.message for e in warnings)
        time.sleep(5)
        gate_failures = load.failures(since=t)
        # 3. A Triton pod deleted under load: the other serves, the deleted one drains.
        t = time.monotonic()
        victim = core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/component=server").items[0]
        core.delete_namespaced_pod(victim.metadata.name, ns)
        wait_for(lambda: _gone(core, ns, victim.metadata.name), timeout=120, interval=1,
                 what="the deleted pod to finish draining")
        deletion_failures = load.failures(since=t)
        served = load.completed(since=t)
    finally:
        load.stop()
    print(f"\n[e2e] failed requests: rollout {len(rollout_failures)}, gate failure {len(gate_failures)}, "
          f"pod deletion {len(deletion_failures)} ({served} served meanwhile); total ok {load.completed()}")
    assert (rollout_failures, gate_failures, deletion_failures) == ([], [], [])
    assert served > 0


def _rolled_out(apps, ns) -> bool:
    d = apps.read_namespaced_deployment("minilm", ns)
    s = d.status
    return (s.observed_generation >= d.metadata.generation and s.updated_replicas == d.spec.replicas
            and s.ready_replicas == d.spec.replicas and (s.replicas or 0) == d.spec.replicas)


def _gone(core, ns, name) -> bool:
    try:
        core.read_namespaced_pod(name, ns)
        return False
    except client.ApiException as err:
        return err.status == 404
