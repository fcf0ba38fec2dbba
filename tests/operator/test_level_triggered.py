"""The operator is level-triggered under faults: retries, explained waits, lost state rebuilt.

Each test injects one fault the review found unhandled (an infrastructure build failure, a
failed reconcile, a lost status, a lost build summary, a missing autoscaler engine, a skewed
builder) on the real control plane, and checks that the model converges and that status says
what happened.
"""

from __future__ import annotations

import time

import pytest
from kubernetes import client
from chart import release_name
from opharness import failure_summary, success_summary, wait_for

from optimodel.operator import manifests

pytestmark = pytest.mark.cluster

SPEC = {
    "model": {"uri": "s3://models/minilm/", "format": "huggingface"},
    "serving": {"gpu": {"product": "NVIDIA-L4"}},
    "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "engine": "hpa"},
}


def key_of(job) -> str:
    return job.metadata.annotations[manifests.KEY_ANNOTATION]


def job_names(models) -> list[str]:
    return sorted(j.metadata.name for j in models.jobs() if j.metadata.deletion_timestamp is None)


def build_and_serve(models, name: str = "minilm", spec: dict = SPEC) -> str:
    models.create(name, spec)
    job = models.wait_job()[0]
    models.finish_build(job.metadata.name, success_summary(key_of(job), name))
    wait_for(lambda: models.status(name).get("phase") == "Ready", timeout=60, what="phase Ready")
    return key_of(job)


@pytest.fixture
def fast_retries(operator_env):
    operator_env.update({"OPTIMODEL_BUILD_RETRY_BASE_SECONDS": "2", "OPTIMODEL_BUILD_MAX_ATTEMPTS": "3",
                         "OPTIMODEL_RETRY_BASE_SECONDS": "0.5", "OPTIMODEL_RETRY_MAX_SECONDS": "2"})


def test_oom_killed_build_is_retried_in_a_new_job_then_serves(models, fast_retries, operator):
    models.create("minilm", SPEC)
    first = models.wait_job()[0]
    models.oom_kill(first.metadata.name)
    def retrying():
        built = models.condition("minilm", "Built") or {}
        return built if built.get("reason") == "BuildRetrying" else None
    built = wait_for(retrying, timeout=30, what="Built=False BuildRetrying")
    assert "OOMKilled" in built["message"] and "attempt 1/3" in built["message"]
    second = wait_for(lambda: next((j for j in models.jobs() if j.metadata.name.endswith("-r1")), None),
                      timeout=30, what="retry Job -r1")
    assert key_of(second) == key_of(first)
    assert second.metadata.annotations[manifests.ATTEMPT_ANNOTATION] == "1"
    models.finish_build(second.metadata.name, success_summary(key_of(second), "minilm"))
    wait_for(lambda: models.status("minilm").get("phase") == "Ready", timeout=60, what="Ready after retry")
    assert job_names(models) == sorted([first.metadata.name, second.metadata.name])
    warnings = [e.reason for e in models.events("minilm") if e.type == "Warning"]
    assert warnings.count("BuildRetrying") == 1, warnings


def test_infrastructure_retries_are_bounded_and_rebuild_annotation_tries_again(models, fast_retries, operator):
    models.create("minilm", SPEC)
    for attempt in range(3):
        job = wait_for(lambda: next((j for j in models.jobs()
                                     if j.metadata.annotations[manifests.ATTEMPT_ANNOTATION] == str(attempt)), None),
                       timeout=40, what=f"build attempt {attempt}")
        models.oom_kill(job.metadata.name)
    wait_for(lambda: models.status("minilm").get("phase") == "Failed", timeout=40, what="phase Failed")
    status = models.status("minilm")
    assert status["build"]["reason"] == "OOMKilled"
    assert "gave up after 3 attempts" in status["build"]["message"]
    assert manifests.REBUILD_ANNOTATION in status["build"]["message"]  # says how to try again
    time.sleep(3)  # longer than any retry wait: no fourth Job appears
    assert len(models.jobs()) == 3
    old_key = status["build"]["key"]
    models.annotate("minilm", {manifests.REBUILD_ANNOTATION: "2026-11-21T21:00"})
    fresh = wait_for(lambda: next((j for j in models.jobs() if key_of(j) != old_key), None),
                     timeout=30, what="a build for the rebuild token")
    models.finish_build(fresh.metadata.name, success_summary(key_of(fresh), "minilm"))
    wait_for(lambda: models.status("minilm").get("phase") == "Ready", timeout=60, what="Ready after rebuild")


def test_model_failure_is_final_until_the_user_asks_for_a_rebuild(models, fast_retries, operator):
    models.create("minilm", SPEC)
    job = models.wait_job()[0]
    models.finish_build(job.metadata.name, failure_summary(key_of(job)), exit_code=16)
    wait_for(lambda: models.status("minilm").get("phase") == "Failed", timeout=30, what="phase Failed")
    time.sleep(4)  # past the retry waits: a model failure is not retried
    assert job_names(models) == [job.metadata.name]
    assert models.status("minilm")["build"]["reason"] == "AccuracyGateFailed"
    models.annotate("minilm", {manifests.REBUILD_ANNOTATION: "again"})
    wait_for(lambda: len(models.jobs()) == 2, timeout=30, what="a new build after the rebuild annotation")


def test_unschedulable_build_explains_the_wait_within_seconds(models, operator):
    spec = {**SPEC, "serving": {"gpu": {"product": "NVIDIA-A100-SXM4-80GB"}}}
    models.create("minilm", spec)
    started = time.monotonic()
    def explained():
        built = models.condition("minilm", "Built") or {}
        return built if built.get("reason") == "BuildPending" else None
    built = wait_for(explained, timeout=30, what="Built=False BuildPending")
    waited = time.monotonic() - started
    assert "unschedulable" in built["message"] and "node affinity/selector" in built["message"], built
    assert models.status("minilm")["phase"] == "Building"
    print(f"[level-triggered] unschedulable build explained {waited:.1f}s after apply")


def test_builder_reporting_another_key_fails_clearly(models, operator):
    models.create("minilm", SPEC)
    job = models.wait_job()[0]
    models.finish_build(job.metadata.name, success_summary("f" * 64, "minilm"))
    wait_for(lambda: models.status("minilm").get("phase") == "Failed", timeout=30, what="phase Failed")
    build = models.status("minilm")["build"]
    assert build["reason"] == "BuildKeyMismatch"
    assert "ffffffffffff" in build["message"] and key_of(job)[:12] in build["message"]
    assert "upgrade both images together" in build["message"]


def test_lost_status_is_rebuilt_from_the_cluster_without_a_rebuild(models, operator, namespace):
    key = build_and_serve(models)
    models.custom.patch_namespaced_custom_object_status(
        "optimodel.dev", "v1alpha1", namespace, "optimizedmodels", "minilm", {"status": None})
    assert not models.get("minilm").get("status")
    # The wipe is a status-only write (no event for the spec): the resync or the next event
    # rebuilds it; an annotation edit is such an event.
    models.annotate("minilm", {"touched": "1"})
    wait_for(lambda: models.status("minilm").get("phase") == "Ready", timeout=30, what="status rebuilt")
    status = models.status("minilm")
    assert status["engine"]["key"] == key and status["engine"]["precision"] == "int8"
    assert status["benchmark"]["speedup"] == pytest.approx(2.7)
    assert len(models.jobs()) == 1, "a lost status must not cost a rebuild"


def test_summary_lost_with_its_pod_is_recovered_by_a_rerun(models, operator, namespace):
    """The completion reconcile never ran and the pod was garbage-collected: the Job is Complete
    with nothing to read. The operator re-runs the build, whose cache hit answers from
    report.json in the artifact store (here: the test plays that builder)."""
    models.create("minilm", SPEC)
    job = models.wait_job()[0]
    operator.kill()
    models.finish_build(job.metadata.name, success_summary(key_of(job), "minilm"))
    wait_for(lambda: (models.batch.read_namespaced_job(job.metadata.name, namespace).status.succeeded or 0) == 1,
             what="Job Complete")
    pod = models.builder_pod(job.metadata.name)
    models.core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    wait_for(lambda: not models.core.list_namespaced_pod(
        namespace, label_selector=f"batch.kubernetes.io/job-name={job.metadata.name}").items, what="pod gone")
    operator.start()
    rerun = wait_for(lambda: next((j for j in models.jobs() if j.metadata.name.endswith("-r1")), None),
                     timeout=30, what="re-run Job")
    models.finish_build(rerun.metadata.name, success_summary(key_of(rerun), "minilm"))
    wait_for(lambda: models.status("minilm").get("phase") == "Ready", timeout=60, what="Ready")


def test_removed_fields_are_removed_from_children(models, operator, namespace):
    """Server-side apply converges on removals: a resource request the spec no longer names is
    no longer requested, while what the operator itself sets stays."""
    spec = {**SPEC, "serving": {**SPEC["serving"], "resources": {"ephemeral-storage": "2Gi"}}}
    build_and_serve(models, spec=spec)
    def triton():
        return models.apps.read_namespaced_deployment("minilm", namespace).spec.template.spec.containers[0]
    assert triton().resources.requests.get("ephemeral-storage") == "2Gi"
    models.patch_spec("minilm", {"serving": {"resources": None}})
    wait_for(lambda: "ephemeral-storage" not in triton().resources.requests, timeout=30,
             what="ephemeral-storage request removed")
    assert "memory" in triton().resources.requests  # the operator's own requests stay
    stage = models.apps.read_namespaced_deployment("minilm", namespace).spec.template.spec.init_containers[0]
    assert [(e.prefix, e.secret_ref.name) for e in stage.env_from] == [("OPTIMODEL_ARTIFACT_", "artifact-store")]


def test_triton_admin_key_secret_is_created_never_read_and_recreated(models, operator, namespace):
    """The key of Triton's restricted endpoints: a random value in a Secret owned by the model,
    referenced (not copied) by the Deployment. The operator, under the chart's RBAC (create on
    Secrets, nothing else), never rewrites it, and creates a new one when it is gone."""
    import base64

    build_and_serve(models)
    name = manifests.triton_admin_secret_name(manifests.ModelRef("minilm", namespace, "", None))
    secret = models.core.read_namespaced_secret(name, namespace)
    key = base64.b64decode(secret.data[manifests.ADMIN_KEY_SECRET_KEY]).decode()
    assert len(key) >= 40
    (owner,) = secret.metadata.owner_references
    assert owner.kind == "OptimizedModel" and owner.uid == models.get("minilm")["metadata"]["uid"]
    triton = models.apps.read_namespaced_deployment("minilm", namespace).spec.template.spec.containers[0]
    (env,) = [e for e in triton.env if e.name == manifests.ADMIN_KEY_ENV]
    assert env.value is None and env.value_from.secret_key_ref.name == name
    assert not any(key in a for a in triton.args)

    models.patch_spec("minilm", {"serving": {"resources": {"ephemeral-storage": "1Gi"}}})
    wait_for(lambda: models.apps.read_namespaced_deployment("minilm", namespace).spec.template.spec
             .containers[0].resources.requests.get("ephemeral-storage") == "1Gi", timeout=30, what="reconciled")
    same = models.core.read_namespaced_secret(name, namespace)
    assert same.metadata.resource_version == secret.metadata.resource_version  # never rewritten

    models.core.delete_namespaced_secret(name, namespace)
    models.patch_spec("minilm", {"serving": {"resources": {"ephemeral-storage": "2Gi"}}})

    def recreated():
        try:
            return models.core.read_namespaced_secret(name, namespace)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise
    again = wait_for(recreated, timeout=30, what="admin key Secret recreated")
    assert base64.b64decode(again.data[manifests.ADMIN_KEY_SECRET_KEY]).decode() != key


def test_deletes_only_what_the_model_owns(models, operator, namespace):
    """An HPA that happens to have the model's name but is not ours survives autoscaling off."""
    foreign = client.V2HorizontalPodAutoscaler(
        metadata=client.V1ObjectMeta(name="minilm"),
        spec=client.V2HorizontalPodAutoscalerSpec(
            max_replicas=2, scale_target_ref=client.V2CrossVersionObjectReference(
                api_version="apps/v1", kind="Deployment", name="someone-elses")))
    models.autoscaling.create_namespaced_horizontal_pod_autoscaler(namespace, foreign)
    build_and_serve(models, spec={**SPEC, "autoscaling": {"enabled": False}})
    time.sleep(1)
    hpa = models.autoscaling.read_namespaced_horizontal_pod_autoscaler("minilm", namespace)
    assert hpa.spec.scale_target_ref.name == "someone-elses" and not hpa.metadata.owner_references


def test_autoscaler_engine_not_installed_is_a_condition_not_a_failed_reconcile(models, operator, cluster,
                                                                              namespace):
    """``engine: keda`` where the operator finds no KEDA. Other tests of the session install
    KEDA's CRD, so this operator is denied the look-up instead (its chart binding removed): it
    treats a CRD it may not see as absent, exactly as on a cluster without KEDA."""
    operator.stop()
    cluster.kubectl("delete", "clusterrolebinding", f"{release_name(namespace)}-crd-lookup")
    operator.start()
    build_and_serve(models, spec={**SPEC, "autoscaling": {"engine": "keda"}})
    autoscaling = models.condition("minilm", "Autoscaling")
    assert (autoscaling["status"], autoscaling["reason"]) == ("False", "AutoscalerNotInstalled")
    assert "KEDA is not installed" in autoscaling["message"] and "hpa or auto" in autoscaling["message"]
    assert models.condition("minilm", "Synced")["status"] == "True"
    assert models.status("minilm")["autoscaler"] == "none"


def test_failed_reconcile_is_retried_and_explained_then_recovers(models, fast_retries, operator, namespace):
    """Take away the operator's permission to write Services: the reconcile fails (403) on every
    try; Synced says so (one Warning Event); give it back and the model converges."""
    rbac = client.RbacAuthorizationV1Api(models.core.api_client)
    (role,) = [r for r in rbac.list_namespaced_role(namespace).items
               if any("services" in (rule.resources or []) for rule in r.rules)]
    original = models.core.api_client.sanitize_for_serialization(role.rules)  # camelCase
    without_services = [r for r in original if "services" not in (r.get("resources") or [])]
    rbac.patch_namespaced_role(role.metadata.name, namespace, {"rules": without_services})
    models.create("minilm", SPEC)
    job = models.wait_job()[0]
    models.finish_build(job.metadata.name, success_summary(key_of(job), "minilm"))
    def failing():
        synced = models.condition("minilm", "Synced") or {}
        return synced if synced.get("reason") == "ReconcileError" else None
    synced = wait_for(failing, timeout=30, what="Synced=False ReconcileError")
    assert "403" in synced["message"] and "services" in synced["message"] and "retrying in" in synced["message"]
    time.sleep(3)  # several retries
    rbac.patch_namespaced_role(role.metadata.name, namespace, {"rules": original})
    wait_for(lambda: models.status("minilm").get("phase") == "Ready", timeout=30, what="Ready after RBAC restored")
    assert models.condition("minilm", "Synced")["status"] == "True"
    # Events follow the status write they announce.
    events = wait_for(lambda: (lambda ev: ev if ("Normal", "Reconciled") in ev else None)(
        [(e.type, e.reason) for e in models.events("minilm")]), what="the Reconciled Event")
    assert events.count(("Warning", "ReconcileError")) == 1, events
    assert operator.metric("optimodel_reconcile_total", result="error") >= 2
