"""The operator end to end on the real control plane: build, serve, edit, fail, delete, restart."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from kubernetes import client
import diff  # tests/support: is what we asked for in the live object?
from opharness import failure_summary, success_summary, wait_for

from optimodel.operator import manifests
from optimodel.operator.settings import OperatorSettings

pytestmark = pytest.mark.cluster

SPEC = {
    "model": {"uri": "s3://models/minilm/", "format": "huggingface"},
    "optimization": {"precision": "auto", "maxBatchSize": 32},
    "serving": {"gpu": {"product": "NVIDIA-L4"}},
    "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 4, "engine": "hpa"},
}


def key_of(job) -> str:
    return job.metadata.annotations[manifests.KEY_ANNOTATION]


def build_and_serve(models, name: str = "minilm", spec: dict = SPEC) -> str:
    """Create a model, complete its build successfully, wait until Ready; return the key."""
    models.create(name, spec)
    job = models.wait_job()[0]
    key = key_of(job)
    models.finish_build(job.metadata.name, success_summary(key, name))
    wait_for(lambda: models.status(name).get("phase") == "Ready", timeout=60, what="phase Ready")
    return key


def test_apply_creates_the_expected_build_job(models, operator, operator_env, namespace):
    body = models.create("minilm", SPEC)
    job = models.wait_job()[0]
    settings = OperatorSettings.from_env(operator_env)
    ref = manifests.ModelRef.from_body(models.get("minilm"))
    expected = manifests.builder_job(ref, key_of(job), settings)
    live = {"apiVersion": "batch/v1", "kind": "Job",  # list items carry no apiVersion/kind
            **client.ApiClient().sanitize_for_serialization(job)}
    assert diff.first_difference(expected, live) is None
    assert job.metadata.name == f"minilm-build-{key_of(job)[:10]}"
    assert job.metadata.owner_references[0].uid == body["metadata"]["uid"]
    pod_spec = job.spec.template.spec
    assert pod_spec.node_selector == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod_spec.containers[0].args[:2] == ["build", "--spec-json"]
    wait_for(lambda: models.status("minilm").get("phase") == "Building", what="phase Building")
    built = models.condition("minilm", "Built")
    # Building, or BuildPending while the scheduler places the builder pod (explained waiting).
    assert built["status"] == "False" and built["reason"] in ("Building", "BuildPending"), built
    assert models.status("minilm")["observedGeneration"] == 1


def test_successful_build_deploys_triton_and_becomes_ready(models, operator, operator_env, namespace):
    key = build_and_serve(models)
    status = models.status("minilm")
    assert status["engine"]["key"] == key
    assert status["engine"]["precision"] == "int8"
    assert status["precision"] == "int8"
    assert status["benchmark"]["speedup"] == pytest.approx(2.7)
    assert status["benchmark"]["speedupText"] == "2.70x"
    # Status holds the summary's engine and benchmark as they were, the engine's uri (the build
    # output root) the one the operator gave the Job.
    summary = success_summary(key, "minilm")
    ref = manifests.ModelRef.from_body(models.get("minilm"))
    uri = manifests.artifact_uri(ref, key, OperatorSettings.from_env(operator_env))
    assert status["engine"] == {**summary["engine"], "uri": uri}
    assert {k: v for k, v in status["benchmark"].items() if k != "speedupText"} == summary["benchmark"]
    assert status["endpoint"] == f"http://minilm.{namespace}.svc:8000/v2/models/minilm"
    assert status["readyReplicas"] >= 1
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Built": "True", "Deployed": "True", "Ready": "True", "Autoscaling": "True", "Synced": "True"}
    uid = models.get("minilm")["metadata"]["uid"]
    deployment = models.apps.read_namespaced_deployment("minilm", namespace)
    service = models.core.read_namespaced_service("minilm", namespace)
    hpa = models.autoscaling.read_namespaced_horizontal_pod_autoscaler("minilm", namespace)
    pdb = client.PolicyV1Api(models.core.api_client).read_namespaced_pod_disruption_budget("minilm", namespace)
    for obj in (deployment, service, hpa, pdb):
        assert obj.metadata.owner_references[0].uid == uid
        assert obj.metadata.labels["app.kubernetes.io/managed-by"] == "optimodel-operator"
    assert deployment.spec.template.metadata.annotations[manifests.KEY_ANNOTATION] == key
    assert [p.name for p in service.spec.ports] == ["http", "grpc", "metrics"]
    assert hpa.spec.metrics[0].pods.metric.name == "nv_inference_pending_request_count"
    reasons = [e.reason for e in models.events("minilm")]
    for reason in ("Building", "EngineBuilt", "TritonDeployed", "ReplicasReady", "AutoscalerActive"):
        assert reasons.count(reason) == 1, f"one {reason} Event expected, got {reasons}"
    assert "Reconciled" not in reasons  # a first successful reconcile is not news


def test_optimization_edit_rebuilds_while_old_engine_keeps_serving(models, operator, namespace):
    old_key = build_and_serve(models)
    before = models.apps.read_namespaced_deployment("minilm", namespace)
    models.patch_spec("minilm", {"optimization": {"precision": "fp16"}})
    jobs = models.wait_job(count=2)
    new_job = next(j for j in jobs if key_of(j) != old_key)
    new_key = key_of(new_job)
    wait_for(lambda: models.status("minilm").get("phase") == "Building", what="phase Building")
    during = models.apps.read_namespaced_deployment("minilm", namespace)
    assert during.metadata.generation == before.metadata.generation
    assert during.spec.template.metadata.annotations[manifests.KEY_ANNOTATION] == old_key
    assert models.condition("minilm", "Ready")["status"] == "True"  # old engine still serving
    models.finish_build(new_job.metadata.name, success_summary(new_key, "minilm", precision="fp16"))
    wait_for(lambda: models.apps.read_namespaced_deployment("minilm", namespace)
             .spec.template.metadata.annotations[manifests.KEY_ANNOTATION] == new_key,
             what="Deployment rolled to the new engine")
    wait_for(lambda: models.status("minilm").get("phase") == "Ready", timeout=60, what="Ready again")
    assert models.status("minilm")["engine"]["precision"] == "fp16"
    assert models.status("minilm")["observedGeneration"] == 2


def test_autoscaling_and_serving_edits_patch_in_place_without_rebuild(models, operator, namespace):
    build_and_serve(models)
    # The autoscaler owns replicas: simulate it scaling out, then edit the spec.
    models.apps.patch_namespaced_deployment_scale("minilm", namespace, {"spec": {"replicas": 3}})
    models.patch_spec("minilm", {"autoscaling": {"maxReplicas": 6},
                                 "serving": {"dynamicBatching": {"maxQueueDelayMicroseconds": 500}}})
    wait_for(lambda: models.autoscaling.read_namespaced_horizontal_pod_autoscaler("minilm", namespace)
             .spec.max_replicas == 6, what="HPA maxReplicas patched")
    deployment = wait_for(lambda: (lambda d: d if '"maxQueueDelayMicroseconds":500' in
                                   " ".join(d.spec.template.spec.init_containers[0].args) else None)(
        models.apps.read_namespaced_deployment("minilm", namespace)), what="serving settings rolled out")
    assert deployment.spec.replicas == 3, "the operator must never write replicas under autoscaling"
    wait_for(lambda: models.status("minilm").get("observedGeneration") == 2, what="observedGeneration 2")
    assert len(models.jobs()) == 1, "serving/autoscaling edits must not rebuild"


def test_failed_build_reports_reason_and_leaves_serving_untouched(models, operator, namespace):
    old_key = build_and_serve(models)
    before = models.apps.read_namespaced_deployment("minilm", namespace)
    models.patch_spec("minilm", {"optimization": {"accuracy": {"threshold": 0.999}}})
    new_job = next(j for j in models.wait_job(count=2) if key_of(j) != old_key)
    models.finish_build(new_job.metadata.name, failure_summary(key_of(new_job)), exit_code=16)
    wait_for(lambda: models.status("minilm").get("phase") == "Failed", timeout=60, what="phase Failed")
    status = models.status("minilm")
    assert status["build"]["reason"] == "AccuracyGateFailed"
    assert "cosine >= 0.999" in status["build"]["message"]
    assert "AccuracyGateFailed" in status["message"]
    built = models.condition("minilm", "Built")
    assert (built["status"], built["reason"]) == ("False", "BuildFailed")
    assert models.condition("minilm", "Ready")["status"] == "True"
    assert status["engine"]["key"] == old_key
    after = models.apps.read_namespaced_deployment("minilm", namespace)
    assert after.metadata.generation == before.metadata.generation
    assert after.spec.template.metadata.annotations[manifests.KEY_ANNOTATION] == old_key
    warnings = [e for e in models.events("minilm") if e.type == "Warning"]
    assert any(e.reason == "BuildFailed" and "AccuracyGateFailed" in e.message for e in warnings)


def test_engine_of_another_tensorrt_is_refused_and_the_old_one_keeps_serving(models, operator, namespace):
    # The Triton image runs TensorRT 10.8.0.43 (the chart's default triton.tensorrtVersion); a
    # builder of another NGC release made a 10.9 plan, which that Triton could not deserialize.
    old_key = build_and_serve(models)
    models.patch_spec("minilm", {"optimization": {"precision": "fp16"}})
    new_job = next(j for j in models.wait_job(count=2) if key_of(j) != old_key)
    summary = success_summary(key_of(new_job), "minilm", precision="fp16")
    summary["engine"]["runtimeVersion"] = "tensorrt 10.9.0.34"
    models.finish_build(new_job.metadata.name, summary)
    wait_for(lambda: models.status("minilm").get("phase") == "Failed", timeout=60, what="phase Failed")
    status = models.status("minilm")
    assert status["build"]["reason"] == "TensorRTVersionMismatch"
    assert "TensorRT 10.9.0.34" in status["build"]["message"] and "10.8.0.43" in status["build"]["message"]
    built = models.condition("minilm", "Built")
    assert (built["status"], built["reason"]) == ("False", "BuildFailed")
    assert status["engine"]["key"] == old_key and models.condition("minilm", "Ready")["status"] == "True"
    deployment = models.apps.read_namespaced_deployment("minilm", namespace)
    assert deployment.spec.template.metadata.annotations[manifests.KEY_ANNOTATION] == old_key
    warnings = [e for e in models.events("minilm") if e.type == "Warning"]
    assert any(e.reason == "BuildFailed" and "TensorRTVersionMismatch" in e.message for e in warnings)
    assert len(models.jobs()) == 2  # final: not retried (the same builder would build the same plan)


def test_same_key_as_served_engine_is_not_rebuilt_and_superseded_build_is_cancelled(
        models, operator, namespace):
    key = build_and_serve(models)
    models.patch_spec("minilm", {"optimization": {"precision": "fp16"}})
    fp16_job = next(j for j in models.wait_job(count=2) if key_of(j) != key)
    models.patch_spec("minilm", {"optimization": {"precision": "auto"}})  # back to the served key
    wait_for(lambda: [j.metadata.name for j in models.jobs()
                      if j.metadata.deletion_timestamp is None] == [f"minilm-build-{key[:10]}"],
             what="running fp16 build cancelled, finished build kept")
    wait_for(lambda: models.status("minilm").get("observedGeneration") == 3, what="generation 3 observed")
    status = models.status("minilm")
    assert status["phase"] == "Ready"
    assert status["engine"]["key"] == key
    assert "build" not in status
    assert fp16_job.metadata.name not in [j.metadata.name for j in models.jobs()
                                           if j.metadata.deletion_timestamp is None]


def test_delete_garbage_collects_children(models, operator, namespace):
    build_and_serve(models)
    models.custom.delete_namespaced_custom_object("optimodel.dev", "v1alpha1", namespace,
                                                  "optimizedmodels", "minilm")
    def all_gone():
        return (not models.apps.list_namespaced_deployment(namespace).items
                and not models.jobs()
                and not [s for s in models.core.list_namespaced_service(namespace).items]
                and not models.autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items)
    wait_for(all_gone, timeout=60, what="children garbage-collected")


def test_operator_restart_mid_build_creates_no_duplicate_job(models, operator, namespace):
    models.create("minilm", SPEC)
    job = models.wait_job()[0]
    operator.kill()
    models.finish_build(job.metadata.name, success_summary(key_of(job), "minilm"))
    operator.start()
    wait_for(lambda: models.status("minilm").get("phase") == "Ready", timeout=60,
             what="convergence after restart")
    assert [j.metadata.name for j in models.jobs()] == [job.metadata.name]


def test_spec_is_never_rewritten_by_the_operator(models, operator, namespace):
    build_and_serve(models)
    live = models.get("minilm")
    assert live["metadata"]["generation"] == 1
    assert not any(k.startswith("kopf.") for k in (live["metadata"].get("annotations") or {}))
    assert not live["metadata"].get("finalizers")


def test_reconciling_an_unchanged_model_writes_nothing(models, operator, namespace):
    """Server-side apply of an unchanged model must converge: a reconcile that runs (proved by
    the operator's reconcile counter) leaves every child untouched."""
    build_and_serve(models)
    api = client.PolicyV1Api(models.core.api_client)
    def versions():
        return {
            "deployment": models.apps.read_namespaced_deployment("minilm", namespace).metadata.resource_version,
            "service": models.core.read_namespaced_service("minilm", namespace).metadata.resource_version,
            "hpa": models.autoscaling.read_namespaced_horizontal_pod_autoscaler("minilm", namespace).metadata.resource_version,
            "pdb": api.read_namespaced_pod_disruption_budget("minilm", namespace).metadata.resource_version,
            "model": models.get("minilm")["metadata"]["resourceVersion"],
        }
    time.sleep(1)  # let the reconciles of the Ready transition finish
    before = versions()
    reconciles = operator.metric("optimodel_reconcile_total", result="ok")
    # A metadata-only change wakes the operator up (an event) without changing the spec.
    models.custom.patch_namespaced_custom_object("optimodel.dev", "v1alpha1", namespace, "optimizedmodels",
                                                 "minilm", {"metadata": {"labels": {"team": "search"}}})
    wait_for(lambda: operator.metric("optimodel_reconcile_total", result="ok") > reconciles,
             what="a reconcile after the label edit")
    after = versions()
    assert after.pop("model") != before.pop("model")  # our label edit
    assert after == before


def test_operator_exposes_its_own_metrics(models, operator, namespace):
    build_and_serve(models)
    text = urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5).read().decode()
    assert 'optimodel_builds_total{event="created"} 1' in text
    assert 'optimodel_builds_total{event="succeeded"} 1' in text
    assert 'optimodel_child_writes_total{action="create",kind="Deployment"} 1' in text
    ok = float(re.search(r'optimodel_reconcile_total\{result="ok"\} (\S+)', text).group(1))
    assert ok >= 3


def test_not_ready_explains_why(models, operator, operator_env, namespace):
    """With a pvc:// artifact root whose claim does not exist, Ready says so."""
    operator.stop()
    operator.env["OPTIMODEL_ARTIFACT_ROOT"] = "pvc://missing-claim/builds"
    operator.start()
    models.create("minilm", SPEC)
    job = models.wait_job()[0]
    models.finish_build(job.metadata.name, success_summary(key_of(job), "minilm"))
    def explained():
        message = (models.condition("minilm", "Ready") or {}).get("message", "")
        return "unschedulable" in message and "missing-claim" in message and "not found" in message
    wait_for(explained, timeout=30, what="Ready condition naming the missing claim")
    assert models.status("minilm")["phase"] == "Deploying"
