"""Autoscaler objects on the real control plane, with the real KEDA and Prometheus Operator CRDs.

The operator must create the ScaledObject / HPA / PodMonitor the real schemas accept, keep them
across model updates, switch cleanly between engines, and never write ``replicas`` while an
autoscaler owns them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from kubernetes import client
import diff  # tests/support: is what we asked for in the live object?
from opharness import success_summary, wait_for

from optimodel.operator import manifests
from optimodel.operator.settings import OperatorSettings

pytestmark = pytest.mark.cluster
REPO = Path(__file__).resolve().parents[2]

SPEC = {
    "model": {"uri": "s3://models/minilm/", "format": "huggingface"},
    "serving": {"gpu": {"product": "NVIDIA-L4"}},
    "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targetQueueDepth": 3, "engine": "auto"},
}


@pytest.fixture(scope="session")
def third_party_crds(cluster):
    crd_dir = subprocess.run([str(REPO / "hack" / "third-party-crds.sh")], check=True,
                             capture_output=True, text=True).stdout.strip()
    cluster.kubectl("apply", "--server-side", "-f", crd_dir)
    for name in ("scaledobjects.keda.sh", "podmonitors.monitoring.coreos.com"):
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{name}")


def custom(models):
    return client.CustomObjectsApi(models.core.api_client)


def scaled_object(models, name="minilm"):
    try:
        return custom(models).get_namespaced_custom_object("keda.sh", "v1alpha1", models.ns, "scaledobjects", name)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def hpa(models, name="minilm"):
    try:
        return models.autoscaling.read_namespaced_horizontal_pod_autoscaler(name, models.ns)
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise


def serve(models, spec=SPEC) -> str:
    models.create("minilm", spec)
    job = models.wait_job()[0]
    key = job.metadata.annotations[manifests.KEY_ANNOTATION]
    models.finish_build(job.metadata.name, success_summary(key, "minilm"))
    wait_for(lambda: models.status("minilm").get("phase") == "Ready", timeout=60, what="Ready")
    return key


def test_auto_picks_keda_and_creates_podmonitor(models, operator, operator_env, third_party_crds):
    serve(models)
    so = wait_for(lambda: scaled_object(models), what="ScaledObject")
    ref = manifests.ModelRef.from_body(models.get("minilm"))
    expected = manifests.scaled_object(ref, OperatorSettings.from_env(operator_env))
    assert diff.first_difference(expected, so) is None
    assert so["metadata"]["ownerReferences"][0]["uid"] == models.get("minilm")["metadata"]["uid"]
    assert hpa(models) is None
    pm = custom(models).get_namespaced_custom_object("monitoring.coreos.com", "v1", models.ns,
                                                     "podmonitors", "minilm")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert models.status("minilm")["autoscaler"] == "keda"


def test_switching_engines_replaces_the_autoscaler(models, operator, third_party_crds):
    serve(models)
    wait_for(lambda: scaled_object(models), what="ScaledObject")
    models.patch_spec("minilm", {"autoscaling": {"engine": "hpa"}})
    wait_for(lambda: hpa(models) is not None and scaled_object(models) is None, what="HPA replaces ScaledObject")
    models.patch_spec("minilm", {"autoscaling": {"enabled": False}, "serving": {"replicas": 2}})
    wait_for(lambda: hpa(models) is None, what="HPA removed when autoscaling is off")
    wait_for(lambda: models.apps.read_namespaced_deployment("minilm", models.ns).spec.replicas == 2,
             what="fixed replicas written when autoscaling is off")
    wait_for(lambda: models.status("minilm").get("autoscaler") == "none", what="status.autoscaler none")


def test_model_update_keeps_autoscaler_and_replicas(models, operator, third_party_crds):
    old_key = serve(models)
    so_before = wait_for(lambda: scaled_object(models), what="ScaledObject")
    models.apps.patch_namespaced_deployment_scale("minilm", models.ns, {"spec": {"replicas": 3}})
    models.patch_spec("minilm", {"optimization": {"precision": "fp16"}})
    new_job = next(j for j in models.wait_job(count=2)
                   if j.metadata.annotations[manifests.KEY_ANNOTATION] != old_key)
    new_key = new_job.metadata.annotations[manifests.KEY_ANNOTATION]
    models.finish_build(new_job.metadata.name, success_summary(new_key, "minilm", precision="fp16"))
    deployment = wait_for(lambda: (lambda d: d if d.spec.template.metadata.annotations[manifests.KEY_ANNOTATION]
                                   == new_key else None)(models.apps.read_namespaced_deployment("minilm", models.ns)),
                          what="rollout of the new engine")
    assert deployment.spec.replicas == 3, "a model update must not reset replicas under autoscaling"
    so_after = scaled_object(models)
    assert so_after["metadata"]["uid"] == so_before["metadata"]["uid"], "autoscaler must be kept, not recreated"
