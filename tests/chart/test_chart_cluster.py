"""The chart on the real control plane: install, upgrade, uninstall; RBAC as the operator's
ServiceAccount sees it; the examples against the real CRD.

kwok plays the kubelet: the operator pod is scheduled and reported Ready (its probes are not
run), which is what ``helm install --wait`` and Pod Security admission need to be proven.
"""

from __future__ import annotations

import json
import uuid

import pytest
import yaml
from chart import (
    CHART, REPO, helm, install_operator_rbac, release_name, token_kubeconfig, uninstall_operator_rbac,
)
from kubernetes import client, config
from polling import wait_for

pytestmark = pytest.mark.cluster

CRD_NAME = "optimizedmodels.optimodel.dev"


def adopt_existing_crd(cluster, release: str, namespace: str) -> None:
    """Other tests may have applied crds/ with kubectl: let this release adopt that CRD, as a
    user moving from deploy/ to Helm would (Helm refuses objects it does not own)."""
    if cluster.kubectl("get", "crd", CRD_NAME, check=False).returncode:
        return
    cluster.kubectl("label", "--overwrite", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm")
    cluster.kubectl("annotate", "--overwrite", "crd", CRD_NAME,
                    f"meta.helm.sh/release-name={release}", f"meta.helm.sh/release-namespace={namespace}")


def deployment_env(apps: client.AppsV1Api, name: str, namespace: str) -> dict[str, str]:
    d = apps.read_namespaced_deployment(name, namespace)
    return {e.name: e.value for e in d.spec.template.spec.containers[0].env}


def test_install_upgrade_uninstall(cluster, namespace, helm_bin):
    release = release_name(namespace)
    apps = client.AppsV1Api(cluster.api_client())
    adopt_existing_crd(cluster, release, namespace)
    try:
        # install: Pod Security `restricted` admits the operator pod; kwok makes it Ready.
        out = helm("install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "120s",
                   "--set", "image.repository=registry.local/optimodel-operator",
                   kubeconfig=cluster.kubeconfig).stdout
        notes = out.split("NOTES:", 1)[1]
        assert f"deployment/{release}" in notes and "kubectl get om" in notes
        d = apps.read_namespaced_deployment(release, namespace)
        assert d.status.ready_replicas == 2  # two replicas; the Lease picks the one that acts
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{CRD_NAME}")
        assert cluster.kubectl("get", "om", "-n", namespace).returncode == 0
        crd = json.loads(cluster.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        env = deployment_env(apps, release, namespace)
        assert env["OPTIMODEL_TRITON_STARTUP_SECONDS"] == "600"
        assert env["OPTIMODEL_OPERATOR_IMAGE"] == "registry.local/optimodel-operator:0.1.0"

        # upgrade with a changed value: a new ReplicaSet rolls out one pod at a time (maxSurge 1,
        # maxUnavailable 0: a standby is always there to take the Lease).
        old_rs = {rs.metadata.name for rs in client.AppsV1Api(cluster.api_client()).list_namespaced_replica_set(
            namespace, label_selector=f"app.kubernetes.io/instance={release}").items}
        helm("upgrade", release, str(CHART), "--namespace", namespace, "--reuse-values", "--wait",
             "--timeout", "120s", "--set", "triton.startupSeconds=900", kubeconfig=cluster.kubeconfig)
        assert deployment_env(apps, release, namespace)["OPTIMODEL_TRITON_STARTUP_SECONDS"] == "900"
        d = apps.read_namespaced_deployment(release, namespace)
        assert d.metadata.generation == 2
        wait_for(lambda: (lambda s: s.observed_generation == 2 and s.updated_replicas == 2
                          and s.ready_replicas == 2 and (s.replicas or 0) == 2)(
            apps.read_namespaced_deployment_status(release, namespace).status), timeout=60, what="rollout")
        new_rs = [rs for rs in apps.list_namespaced_replica_set(
            namespace, label_selector=f"app.kubernetes.io/instance={release}").items
            if rs.metadata.name not in old_rs]
        assert len(new_rs) == 1 and new_rs[0].status.ready_replicas == 2

        # uninstall: the operator goes, the CRD (and every OptimizedModel) stays.
        helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout", "60s",
             kubeconfig=cluster.kubeconfig)
        assert cluster.kubectl("get", "deployment", release, "-n", namespace, check=False).returncode != 0
        assert cluster.kubectl("get", "clusterrole", release, check=False).returncode != 0
        assert cluster.kubectl("get", "crd", CRD_NAME).returncode == 0
        assert cluster.kubectl("get", "om", "-A").returncode == 0
    finally:
        helm("uninstall", release, "--namespace", namespace, "--ignore-not-found",
             kubeconfig=cluster.kubeconfig, check=False)


# --- RBAC as the operator's ServiceAccount ---------------------------------------------------------

@pytest.fixture
def watched_namespace(cluster):
    name = f"w-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def can_i(cluster, user: str, verb: str, resource: str, namespace: str | None, subresource: str = "") -> bool:
    args = ["auth", "can-i", verb, resource, "--as", user]
    args += ["-n", namespace] if namespace else []
    args += [f"--subresource={subresource}"] if subresource else []
    out = cluster.kubectl(*args, check=False).stdout.strip()
    assert out in ("yes", "no"), out
    return out == "yes"


def self_review(api: client.ApiClient, verb: str, group: str, resource: str, namespace: str | None,
                subresource: str = "", name: str = "") -> bool:
    review = client.AuthorizationV1Api(api).create_self_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                        "namespace": namespace, "subresource": subresource, "name": name}},
    })
    return review.status.allowed


EXPECTATIONS = [
    # verb, group, resource, subresource, allowed
    ("create", "batch", "jobs", "", True),
    ("delete", "batch", "jobs", "", True),
    ("watch", "optimodel.dev", "optimizedmodels", "", True),
    ("patch", "optimodel.dev", "optimizedmodels", "status", True),
    ("patch", "optimodel.dev", "optimizedmodels", "", False),
    ("update", "optimodel.dev", "optimizedmodels", "", False),
    ("delete", "optimodel.dev", "optimizedmodels", "", False),
    ("get", "", "secrets", "", False),
    ("list", "", "secrets", "", False),
    ("delete", "apps", "deployments", "", False),
    ("update", "apps", "deployments", "", False),
    ("create", "", "pods", "", False),
    ("create", "", "events", "", True),
]


@pytest.mark.parametrize("mode", ["namespaced", "cluster-wide"])
def test_operator_service_account_permissions(cluster, namespace, watched_namespace, mode, tmp_path):
    watch = [watched_namespace] if mode == "namespaced" else None
    user = install_operator_rbac(cluster, namespace, watch)
    try:
        assert user == f"system:serviceaccount:{namespace}:{release_name(namespace)}"
        # kubectl impersonating the account (the admin may impersonate) ...
        for verb, group, resource, sub, allowed in EXPECTATIONS:
            qualified = f"{resource}.{group}" if group else resource
            assert can_i(cluster, user, verb, qualified, watched_namespace, sub) is allowed, (verb, qualified, sub)
        # ... and the Python client authenticated *as* the account (a TokenRequest token).
        api = config.new_client_from_config(
            config_file=token_kubeconfig(cluster, user, tmp_path / "sa.kubeconfig"))
        for verb, group, resource, sub, allowed in EXPECTATIONS:
            assert self_review(api, verb, group, resource, watched_namespace, sub) is allowed, (verb, resource, sub)
        # CRD lookups: the two named CRDs only, in both modes.
        crd = ("get", "apiextensions.k8s.io", "customresourcedefinitions")
        assert self_review(api, *crd, None, name="scaledobjects.keda.sh")
        assert self_review(api, *crd, None, name="podmonitors.monitoring.coreos.com")
        assert not self_review(api, *crd, None, name=CRD_NAME)
        assert not self_review(api, "list", "apiextensions.k8s.io", "customresourcedefinitions", None)
        # Outside the watched namespaces only cluster-wide mode may act.
        assert self_review(api, "create", "batch", "jobs", "default") is (mode == "cluster-wide")
        assert self_review(api, "list", "optimodel.dev", "optimizedmodels", None) is (mode == "cluster-wide")
        # A real request with the token: listing Jobs works, reading Secrets is refused.
        batch = client.BatchV1Api(api)
        assert batch.list_namespaced_job(watched_namespace).items == []
        with pytest.raises(client.ApiException) as err:
            client.CoreV1Api(api).list_namespaced_secret(watched_namespace)
        assert err.value.status == 403
    finally:
        uninstall_operator_rbac(cluster, namespace)


# --- examples against the real CRD --------------------------------------------------------------------

@pytest.fixture
def chart_crd(cluster, helm_bin):
    """The chart's CRD (== crds/), applied and Established."""
    from chart import template

    (crd,) = [o for o in template(show_only=("templates/crd.yaml",))]
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager", "optimodel-tests",
                    "-f", "-", input=yaml.safe_dump(crd))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{CRD_NAME}")


@pytest.mark.parametrize("example", ["minimal.yaml", "full.yaml"])
def test_examples_are_accepted_by_the_crd(cluster, namespace, chart_crd, example):
    path = REPO / "examples" / example
    out = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-n", namespace, "-f", str(path),
                          "-o", "json", check=False)
    assert out.returncode == 0, out.stderr
    stored = json.loads(out.stdout)
    source = yaml.safe_load(path.read_text())
    assert stored["kind"] == "OptimizedModel"
    # Nothing the example sets was pruned as unknown (a typo would silently vanish).

    def subset(a, b, where="spec"):
        if isinstance(a, dict):
            for k, v in a.items():
                assert k in b, f"{where}.{k} was pruned by the API server"
                subset(v, b[k], f"{where}.{k}")
        else:
            assert a == b or (isinstance(a, (int, float)) and float(a) == float(b)), where

    subset(source["spec"], stored["spec"])


def test_a_bad_example_is_refused_with_the_field_path(cluster, namespace, chart_crd):
    bad = yaml.safe_load((REPO / "examples" / "full.yaml").read_text())
    bad["spec"]["autoscaling"]["minReplicas"] = 10
    out = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                          input=yaml.safe_dump(bad), check=False)
    assert out.returncode != 0 and "spec.autoscaling.minReplicas" in out.stderr, out.stderr
