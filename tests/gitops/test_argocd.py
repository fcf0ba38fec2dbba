"""Argo CD syncs optimodel from git: first sync, a failing build, an autoscaler owning replicas,
removal, and an operator upgrade. Everything Argo CD reports is read from its own Application
objects (``status.sync``, ``status.health``, ``status.resources``, ``status.history``).

The scenarios run in order on one git repository and one Argo CD: each starts from the state the
previous one left, as a real repository's history would.

Repository layout (what ``docs/argocd.md`` shows):

- ``apps/``: the Applications of ``examples/argocd/apps/``, synced by ``examples/argocd/root.yaml``
  (an app of apps): ``optimodel`` (the chart, sync wave 0) and ``models`` (the OptimizedModel
  manifests, wave 1), so the CRD and the operator's RBAC land before any model.
- ``charts/optimodel/``: the chart, as in this repository.
- ``models/``: one OptimizedModel per file.
"""

from __future__ import annotations

import copy
import time

import pytest
import yaml
from argocd import (OPERATOR_NAMESPACE, RELEASE, REPO, health, operation, resource_status, sync_status,
                    synced_revision)
from kubernetes import client
from opharness import Models, failure_summary, success_summary, wait_for

from optimodel.operator import manifests

pytestmark = [pytest.mark.gitops, pytest.mark.cluster, pytest.mark.slow]

MODELS_NAMESPACE = "ml"
KEY = manifests.KEY_ANNOTATION
EXAMPLES = REPO / "examples" / "argocd"  # what docs/argocd.md shows users; used here as is
# Chart values the local cluster needs on top of the example's: images that kwok "runs" (the
# test plays the operator pod itself) and one operator replica.
TEST_VALUES = {
    "image": {"repository": "registry.local/optimodel-operator", "tag": "test"},
    "operator": {"replicas": 1, "leaderElection": {"enabled": False}},
    "builder": {"image": {"repository": "registry.local/optimodel-builder", "tag": "test"}},
    "triton": {"image": {"repository": "registry.local/tritonserver", "tag": "test"}},
}
MODEL_SPECS = {
    "minilm": {"model": {"uri": "s3://models/minilm/", "format": "huggingface"},
               "serving": {"gpu": {"product": "NVIDIA-L4"}},
               "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "engine": "hpa"}},
    "tiny": {"model": {"uri": "s3://models/tiny/", "format": "onnx"},
             "serving": {"gpu": {"product": "NVIDIA-L4"}},
             "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "engine": "hpa"}},
}


def merged(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def example_app(relative: str, repo_url: str) -> dict:
    """An Application of ``examples/argocd/``, pointed at the test's repository."""
    app = yaml.safe_load((EXAMPLES / relative).read_text())
    app["spec"]["source"]["repoURL"] = repo_url
    return app


def chart_app(repo_url: str, values: dict) -> dict:
    app = example_app("apps/optimodel.yaml", repo_url)
    helm = app["spec"]["source"]["helm"]
    helm["valuesObject"] = merged(helm["valuesObject"], values)
    assert helm["releaseName"] == RELEASE and app["spec"]["destination"]["namespace"] == OPERATOR_NAMESPACE
    return app


def optimized_model(name: str, spec: dict) -> dict:
    return {"apiVersion": "optimodel.dev/v1alpha1", "kind": "OptimizedModel",
            "metadata": {"name": name, "namespace": MODELS_NAMESPACE}, "spec": spec}


class Scenario:
    """State shared by the ordered scenarios (the repository's history, the engines built)."""

    keys: dict[str, str] = {}
    observed_health: list[str] = []


@pytest.fixture(scope="module")
def stack(gitops_cluster, argocd, git_repo, operator_pod):
    return gitops_cluster, argocd, git_repo, operator_pod


@pytest.fixture(scope="module")
def models(gitops_cluster) -> Models:
    return Models(gitops_cluster.api_client(), MODELS_NAMESPACE)


def model_health(cd, name: str) -> dict:
    res = resource_status(cd.app("models"), "OptimizedModel", name) or {}
    return res.get("health") or {}


def wait_health(cd, name: str, status: str, timeout: float = 120, message: str = "") -> dict:
    """Wait until Argo CD reports the model's health as ``status`` (with ``message`` in its
    message); the health seen. On timeout, the failure shows what Argo CD did report."""
    def seen():
        got = model_health(cd, name)
        return got if got.get("status") == status and message.lower() in got.get("message", "").lower() else None
    try:
        return wait_for(seen, timeout=timeout, interval=0.5, what=f"{name} {status} ({message!r})")
    except AssertionError as err:
        app_status = cd.app("models").get("status") or {}
        raise AssertionError(f"{err}\nArgo CD reports: resources={app_status.get('resources')} "
                             f"conditions={app_status.get('conditions')}") from None


def jobs_of(models: Models, name: str) -> list:
    return [j for j in models.jobs() if j.metadata.labels.get(manifests.MODEL_LABEL) == name]


def new_job(models: Models, name: str, old_keys: set[str]):
    def find():
        return next((j for j in jobs_of(models, name) if j.metadata.annotations[KEY] not in old_keys), None)
    return wait_for(find, timeout=60, what=f"a new build Job of {name}")


def commit_and_refresh(cd, repo, message: str, *apps: str) -> str:
    sha = repo.commit(message)
    for app in apps:
        cd.refresh(app)
    def converged(name: str) -> bool:
        # Synced at the commit *and* the sync operation that applied it finished: the status can
        # read Synced between two passes of a running operation, whose end then adds to history.
        app = cd.app(name)
        op = operation(app)
        return (synced_revision(app) == sha and sync_status(app) == "Synced" and op.get("phase") == "Succeeded"
                and (op.get("syncResult") or {}).get("revision") == sha)

    for app in apps:
        try:
            wait_for(lambda a=app: converged(a), timeout=120, interval=1,
                     what=f"Application {app} Synced at {sha[:8]}, its sync operation Succeeded")
        except AssertionError as err:
            app_status = cd.app(app).get("status") or {}
            raise AssertionError(f"{err}\nArgo CD reports: sync={app_status.get('sync')} operation="
                                 f"{(app_status.get('operationState') or {}).get('message')} "
                                 f"conditions={app_status.get('conditions')}") from None
    return sha


def test_first_sync_goes_progressing_then_healthy(stack, models):
    cluster, cd, repo, operator_pod = stack
    repo.copy_tree(REPO / "charts" / "optimodel", "charts/optimodel")
    repo.write("apps/optimodel.yaml", chart_app(repo.url, TEST_VALUES))
    models_app = example_app("apps/models.yaml", repo.url)
    assert models_app["spec"]["destination"]["namespace"] == MODELS_NAMESPACE
    repo.write("apps/models.yaml", models_app)
    for name, spec in MODEL_SPECS.items():
        repo.write(f"models/{name}.yaml", optimized_model(name, spec))
    sha = repo.commit("optimodel and two models")
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(example_app("root.yaml", repo.url)))

    # Wave 0: the chart. Its operator Deployment is Healthy once kwok runs its pod.
    wait_for(lambda: sync_status(cd.app("optimodel")) == "Synced" and health(cd.app("optimodel")) == "Healthy",
             timeout=240, interval=1, what="Application optimodel Synced and Healthy")
    crd = cluster.kubectl("get", "crd", "optimizedmodels.optimodel.dev", "-o", "name").stdout.strip()
    assert crd == "customresourcedefinition.apiextensions.k8s.io/optimizedmodels.optimodel.dev"
    operator_pod.run_current()  # the kubelet starts the operator pod Argo CD just created

    # Wave 1: the models, only after the chart was Healthy.
    wait_for(lambda: sync_status(cd.app("models")) == "Synced", timeout=180, interval=1,
             what="Application models Synced")
    assert synced_revision(cd.app("models")) == sha
    # Wave order: the models' first sync (Argo CD's history) began only once the chart was
    # Healthy, i.e. after its operator Deployment became Available (and so after the CRD).
    available_at = next(c["lastTransitionTime"] for c in operator_pod.deployment()["status"]["conditions"]
                        if c["type"] == "Available" and c["status"] == "True")
    models_started_at = cd.app("models")["status"]["history"][0]["deployStartedAt"]
    assert models_started_at >= available_at, ("the models synced before the chart was Healthy",
                                               models_started_at, available_at)

    # Progressing while the engines build (the test plays the builder pods' kubelet) ...
    models.wait_job(count=len(MODEL_SPECS), timeout=60)
    for name in MODEL_SPECS:
        (job,) = jobs_of(models, name)
        seen = wait_health(cd, name, "Progressing", timeout=60, message="build")
        Scenario.observed_health.append(f"{name}:Progressing:{seen.get('message', '')}")
        assert health(cd.app("models")) == "Progressing"
        Scenario.keys[name] = job.metadata.annotations[KEY]
        models.finish_build(job.metadata.name, success_summary(Scenario.keys[name], name))
    # ... then Healthy once Ready.
    for name in MODEL_SPECS:
        seen = wait_health(cd, name, "Healthy")
        Scenario.observed_health.append(f"{name}:Healthy:{seen.get('message', '')}")
        assert models.status(name)["phase"] == "Ready"
    wait_for(lambda: health(cd.app("models")) == "Healthy", timeout=60, interval=1, what="models app Healthy")
    assert sync_status(cd.app("models")) == "Synced"
    assert health(cd.app("root")) == "Healthy" and sync_status(cd.app("root")) == "Synced"
    print("first sync, health seen:", Scenario.observed_health)
    print("first sync, syncs in history:", {a: len(cd.app(a)["status"].get("history") or [])
                                            for a in ("root", "optimodel", "models")})


def test_failing_build_is_degraded_and_the_old_engine_keeps_serving(stack, models):
    _, cd, repo, _ = stack
    old_key = Scenario.keys["minilm"]
    spec = copy.deepcopy(MODEL_SPECS["minilm"])
    spec["optimization"] = {"precision": "int8", "calibration": {"synthetic": True},
                            "accuracy": {"metric": "cosine", "threshold": 1.0}}
    repo.write("models/minilm.yaml", optimized_model("minilm", spec))
    commit_and_refresh(cd, repo, "minilm: int8 with an accuracy gate of 1.0", "models")

    job = new_job(models, "minilm", {old_key})
    message = "no candidate reached cosine >= 1.0 (best: int8 0.9931)"
    models.finish_build(job.metadata.name, failure_summary(job.metadata.annotations[KEY], message=message), 16)
    seen = wait_health(cd, "minilm", "Degraded")
    assert "AccuracyGateFailed" in seen["message"] and message in seen["message"], seen
    wait_for(lambda: health(cd.app("models")) == "Degraded", timeout=60, interval=1, what="models app Degraded")
    assert sync_status(cd.app("models")) == "Synced"  # git converged; the build did not
    print("failing build, Argo CD says:", seen)

    deployment = models.apps.read_namespaced_deployment("minilm", MODELS_NAMESPACE)
    assert deployment.metadata.annotations[KEY] == old_key  # the previous engine keeps serving
    assert (deployment.status.available_replicas or 0) >= 1


def test_autoscaler_owns_replicas_without_drift(stack, models):
    _, cd, repo, _ = stack
    spec = copy.deepcopy(MODEL_SPECS["tiny"])
    spec["autoscaling"]["minReplicas"] = 2
    repo.write("models/tiny.yaml", optimized_model("tiny", spec))
    sha = commit_and_refresh(cd, repo, "tiny: at least two replicas", "models")
    history_before = len(cd.app("models")["status"].get("history") or [])

    # The operator raises the HPA's minReplicas; the HPA controller (not the operator) scales.
    wait_for(lambda: models.autoscaling.read_namespaced_horizontal_pod_autoscaler("tiny", MODELS_NAMESPACE)
             .spec.min_replicas == 2, timeout=60, what="HPA minReplicas 2")
    deployment = wait_for(lambda: (lambda d: d if d.spec.replicas == 2 else None)(
        models.apps.read_namespaced_deployment("tiny", MODELS_NAMESPACE)), timeout=60, what="replicas 2")
    owners = [(f.manager, f.operation) for f in deployment.metadata.managed_fields
              if "f:replicas" in (f.fields_v1 or {}).get("f:spec", {})]
    assert ("kube-controller-manager", "Update") in owners and not any(
        m == manifests.FIELD_MANAGER for m, _ in owners), owners

    # Argo CD's own verdict over three reconciliation periods (10 s each), with a refresh before
    # every look (a full comparison of git's manifests with the live objects, as the periodic
    # resync does; git has not moved, so there is nothing for a hard refresh to re-read): Synced
    # at the same revision, the model Synced, and no self-heal sync ran.
    deadline = time.monotonic() + 35
    while time.monotonic() < deadline:
        cd.refresh("models", "normal")
        app = cd.app("models")
        assert sync_status(app) == "Synced" and synced_revision(app) == sha, cd.out_of_sync_report("models")
        assert (resource_status(app, "OptimizedModel", "tiny") or {}).get("status") == "Synced", \
            cd.out_of_sync_report("models")
        time.sleep(5)
    assert len(cd.app("models")["status"].get("history") or []) == history_before, "a self-heal sync ran"
    assert models.apps.read_namespaced_deployment("tiny", MODELS_NAMESPACE).spec.replicas == 2
    print("autoscaler owns replicas; Argo CD:", cd.app("models")["status"]["sync"])


def test_removing_a_manifest_prunes_the_model_and_its_children(stack, models):
    cluster, cd, repo, _ = stack
    repo.remove("models/tiny.yaml")
    commit_and_refresh(cd, repo, "remove tiny", "models")

    def gone():
        try:
            models.get("tiny")
            return False
        except client.ApiException as err:
            return err.status == 404
    wait_for(gone, timeout=60, what="OptimizedModel tiny pruned")
    selector = f"{manifests.MODEL_LABEL}=tiny"

    def children() -> str:
        return cluster.kubectl("get", "deployments,services,hpa,pdb,jobs,secrets,pods", "-n", MODELS_NAMESPACE,
                               "-l", selector, "-o", "name").stdout.strip()
    wait_for(lambda: children() == "", timeout=120, interval=1, what="tiny's children garbage-collected")
    assert resource_status(cd.app("models"), "OptimizedModel", "tiny") is None
    assert models.status("minilm")  # the other model is untouched


def test_chart_upgrade_keeps_the_crd_and_the_models_serving(stack, models):
    cluster, cd, repo, operator_pod = stack
    crd_uid = cluster.kubectl("get", "crd", "optimizedmodels.optimodel.dev", "-o", "jsonpath={.metadata.uid}").stdout
    serving = models.apps.read_namespaced_deployment("minilm", MODELS_NAMESPACE)
    chart_file = repo.work / "charts" / "optimodel" / "Chart.yaml"
    chart = yaml.safe_load(chart_file.read_text())
    chart["version"] = chart["version"] + "-upgrade.1"
    repo.write("charts/optimodel/Chart.yaml", chart)
    values = merged(TEST_VALUES, {"operator": {"resyncSeconds": 120}})
    repo.write("apps/optimodel.yaml", chart_app(repo.url, values))
    commit_and_refresh(cd, repo, "optimodel: chart upgrade, resync every 120 s", "root", "optimodel")
    wait_for(lambda: health(cd.app("optimodel")) == "Healthy", timeout=120, interval=1, what="optimodel Healthy")

    deployment = operator_pod.deployment()
    assert operator_pod.env(deployment)["OPTIMODEL_RESYNC_SECONDS"] == "120"
    assert deployment["metadata"]["labels"]["helm.sh/chart"].endswith("-upgrade.1")
    operator_pod.run_current()  # the new operator pod
    assert operator_pod.process.env["OPTIMODEL_RESYNC_SECONDS"] == "120"

    assert cluster.kubectl("get", "crd", "optimizedmodels.optimodel.dev", "-o",
                           "jsonpath={.metadata.uid}").stdout == crd_uid  # the CRD stayed
    # The new operator reconciles the model again (its Synced condition is rewritten) and
    # leaves the serving Deployment as it was: same template, still available.
    wait_for(lambda: operator_pod.process.metric("optimodel_reconcile_total", result="ok") > 0, timeout=60,
             what="the upgraded operator reconciling")
    after = models.apps.read_namespaced_deployment("minilm", MODELS_NAMESPACE)
    assert after.metadata.generation == serving.metadata.generation
    assert after.metadata.annotations[KEY] == Scenario.keys["minilm"] and after.status.available_replicas >= 1
    assert sync_status(cd.app("models")) == "Synced"
    print("upgrade: optimodel", cd.app("optimodel")["status"]["sync"], "models", cd.app("models")["status"]["sync"])
