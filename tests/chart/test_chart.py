"""The Helm chart without a cluster: lint, offline schema validation, least-privilege RBAC,
settings mapping, documentation, and freshness of every generated file.

Why these checks: a chart fails in ways ``helm install`` on a laptop never shows -- a Role that
quietly grants ``*``, a value that no longer reaches the operator, a CRD copy older than the API
models, a plain manifest rendered from last month's chart. Each test pins one of those.
"""

from __future__ import annotations

import json
import re

import kubernetes_validate
import pytest
import yaml
from chart import CHART, REPO, helm, rbac_rules, template

from optimodel.api.crd import crd_manifest
from optimodel.operator.settings import ENV_PREFIX, OperatorSettings

# kubernetes-validate 1.34.0 ships JSON schemas up to Kubernetes 1.33 (the newest it has);
# our API use is unchanged between 1.33 and 1.34.
SCHEMA_VERSION = kubernetes_validate.latest_version()
# Objects of CRD-defined kinds: no upstream schema, checked by shape instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

NAMESPACED = {"watchNamespaces": ["ml-a", "ml-b"]}
EVERYTHING = {
    "metrics.serviceMonitor.enabled": True,
    "metrics.serviceMonitor.labels": {"release": "prom"},
    "prometheusAdapter.rulesConfigMap.enabled": True,
    "prometheusAdapter.rulesConfigMap.namespace": "monitoring",
    "builder.ttlSecondsAfterFinished": 600,
    "builder.cpuImage.repository": "registry.local/optimodel-builder-cpu",
    "cpu.nodeSelector": {"optimodel.dev/pool": "cpu"},
    "cpu.tolerations": [{"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}],
    "triton.repositoryLayout": "python",
    "artifacts.credentialsSecret": "artifact-store",
    "operator.verbose": True,
    "imagePullSecrets": [{"name": "regcred"}],
    "podAnnotations": {"a": "b"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
}
VARIANTS = {"default": {}, "namespaced": NAMESPACED, "everything": {**NAMESPACED, **EVERYTHING}}

# What the operator calls on the API server (operator/kube.py, operator/reconcile.py, kopf).
ALLOWED_VERBS = {
    ("optimodel.dev", "optimizedmodels"): {"get", "list", "watch"},
    ("optimodel.dev", "optimizedmodels/status"): {"get", "patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("", "services"): {"get", "create", "patch"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
    ("", "secrets"): {"create"},  # Triton's admin key: created, never read (manifests.triton_admin_secret)
    ("policy", "poddisruptionbudgets"): {"get", "create", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "create", "patch", "delete"},
    ("keda.sh", "scaledobjects"): {"get", "create", "patch", "delete"},
    ("monitoring.coreos.com", "podmonitors"): {"get", "create", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get"},
    ("coordination.k8s.io", "leases"): {"create", "get", "update"},  # leader election
}
CRD_LOOKUPS = {"scaledobjects.keda.sh", "podmonitors.monitoring.coreos.com"}


def operator_container(objects: list[dict]) -> dict:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def operator_env(objects: list[dict]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in operator_container(objects)["env"] if "value" in e}


# --- lint and schema -----------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_is_clean(helm_bin, variant):
    from chart import set_args

    out = helm("lint", "--strict", str(CHART), *set_args(VARIANTS[variant])).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize("bad", [
    {"image.pullPolicy": "Sometimes"},
    {"watchNamespaces": ["Not_A_Namespace"]},
    {"artifacts.root": "gs://bucket"},
    {"builder.backoffLimit": -1},
    {"crds.enabled": "yes"},
    {"unknownTopLevel": 1},
    {"gpu.tolerations": [{"operator": "Sometimes"}]},
])
def test_values_schema_refuses_bad_values(helm_bin, bad):
    from chart import set_args

    proc = helm("template", "x", str(CHART), *set_args(bad), check=False)
    assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr, proc.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_objects_validate_against_kubernetes_schemas(helm_bin, variant):
    objects = template(VARIANTS[variant])
    skipped = []
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            skipped.append(obj["kind"])
            assert obj["spec"]["endpoints"][0]["port"] == "metrics"
            continue
        kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
    assert skipped == (["ServiceMonitor"] if variant == "everything" else [])


def test_plain_manifests_validate_against_kubernetes_schemas():
    objects = [o for o in yaml.safe_load_all((REPO / "deploy" / "optimodel.yaml").read_text()) if o]
    for obj in objects:
        kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
    kinds = [o["kind"] for o in objects]
    assert kinds[0] == "Namespace" and "CustomResourceDefinition" in kinds and "Deployment" in kinds
    namespace = objects[0]
    assert namespace["metadata"]["name"] == "optimodel-system"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert all(o["metadata"].get("namespace") in (None, "optimodel-system") for o in objects)


# --- RBAC ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_is_least_privilege(helm_bin, variant):
    rules = rbac_rules(template(VARIANTS[variant]))
    assert rules
    granted: dict[tuple[str, str], set[str]] = {}
    for kind, name, rule in rules:
        where = f"{kind}/{name} rule {rule}"
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(field, []), f"wildcard in {field}: {where}"
        assert not rule.get("nonResourceURLs"), where
        if "secrets" in rule["resources"]:  # create only: no Secret can ever be read
            assert rule["resources"] == ["secrets"] and rule["verbs"] == ["create"], f"Secrets access: {where}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                allowed = ALLOWED_VERBS.get((group, resource))
                assert allowed is not None, f"resource {group}/{resource} is not needed: {where}"
                extra = set(rule["verbs"]) - allowed
                assert not extra, f"verbs {sorted(extra)} beyond what the operator calls: {where}"
                granted.setdefault((group, resource), set()).update(rule["verbs"])
        if "customresourcedefinitions" in rule["resources"]:
            assert kind == "ClusterRole" and set(rule["resourceNames"]) == CRD_LOOKUPS, where
        if "leases" in rule["resources"]:  # only its own Lease, in its own namespace
            assert kind == "Role" and (rule["verbs"] == ["create"] or rule["resourceNames"] == ["optimodel"]), where
    # ... and nothing the operator needs is missing.
    assert granted == ALLOWED_VERBS


def test_rbac_modes(helm_bin):
    def kinds(objects):
        return sorted((o["kind"], o["metadata"].get("namespace", "")) for o in objects
                      if o["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"))

    leader_election = [("Role", "ops"), ("RoleBinding", "ops")]  # the Lease, in the release namespace
    assert kinds(template(namespace="ops")) == [
        ("ClusterRole", ""), ("ClusterRole", ""), ("ClusterRoleBinding", ""), ("ClusterRoleBinding", ""),
        *leader_election]
    assert kinds(template(NAMESPACED, namespace="ops")) == sorted([
        ("ClusterRole", ""), ("ClusterRoleBinding", ""),
        ("Role", "ml-a"), ("Role", "ml-b"), ("RoleBinding", "ml-a"), ("RoleBinding", "ml-b"), *leader_election])
    single = {"operator.replicas": 1, "operator.leaderElection.enabled": False}
    assert not [k for k in kinds(template(single, namespace="ops")) if k[1] == "ops"]
    (cluster_role,) = [o for o in template(NAMESPACED) if o["kind"] == "ClusterRole"]
    assert [r["resources"] for r in cluster_role["rules"]] == [["customresourcedefinitions"]]
    for binding in (o for o in template(NAMESPACED, namespace="ops") if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "optimodel", "namespace": "ops"}]


# --- the operator Deployment ------------------------------------------------------------------

def test_operator_pod_is_restricted_and_probed(helm_bin):
    objects = template()
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    c = operator_container(objects)
    # Two replicas electing a leader, rolled one at a time; the Lease decides who acts.
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    env = operator_env(objects)
    assert env["OPTIMODEL_LEADER_ELECTION"] == "true"
    assert env["OPTIMODEL_LEADER_ELECTION_LEASE_NAME"] == "optimodel"
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": 8080, "metrics": 9090}
    assert c["args"] == ["operator", "--health-port=8080", "--metrics-port=9090"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert operator_env(objects)["HOME"] == "/tmp"
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_metrics_can_be_switched_off(helm_bin):
    objects = template({"metrics.enabled": False, "metrics.serviceMonitor.enabled": True})
    assert not [o for o in objects if o["kind"] in ("Service", "ServiceMonitor")]
    c = operator_container(objects)
    assert [p["name"] for p in c["ports"]] == ["health"]
    assert not any(a.startswith("--metrics-port") for a in c["args"])


def test_every_operator_setting_is_a_chart_value(helm_bin):
    expected = {ENV_PREFIX + name.upper() for name in OperatorSettings.model_fields}
    env = operator_env(template({**NAMESPACED, **EVERYTHING}))
    assert {k for k in env if k.startswith(ENV_PREFIX)} == expected
    settings = OperatorSettings.from_env(env)
    assert settings.namespaces == ["ml-a", "ml-b"]
    assert settings.artifact_credentials_secret == "artifact-store"
    assert settings.build_ttl_seconds_after_finished == 600
    assert settings.operator_image == "ghcr.io/optimodel/optimodel-operator:0.1.0"


def test_chart_defaults_are_the_operator_defaults(helm_bin):
    """Default values configure exactly what OperatorSettings() would pick by itself, except
    leader election, which only the chart can configure (it knows the release namespace)."""
    env = operator_env(template(namespace="ops"))
    settings = OperatorSettings.from_env(env)
    assert (settings.leader_election, settings.leader_election_namespace,
            settings.leader_election_lease_name) == (True, "ops", "optimodel")
    election = {"leader_election": False, "leader_election_namespace": None,
                "leader_election_lease_name": OperatorSettings().leader_election_lease_name}
    assert settings.model_copy(update=election) == OperatorSettings()


def test_one_replica_without_leader_election_recreates_and_two_without_are_refused(helm_bin):
    objects = template({"operator.replicas": 1, "operator.leaderElection.enabled": False})
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "OPTIMODEL_LEADER_ELECTION" not in operator_env(objects)
    proc = helm("template", "x", str(CHART), "--set", "operator.leaderElection.enabled=false", check=False)
    assert proc.returncode != 0 and "operator.replicas > 1 needs operator.leaderElection.enabled" in proc.stderr


def test_values_reach_the_settings(helm_bin):
    env = operator_env(template({
        "image.digest": "sha256:" + "a" * 64,
        "builder.image.tag": "0.2.0",
        "triton.image.repository": "registry.local/tritonserver",
        "gpu.tolerations": [{"key": "gpu", "operator": "Exists"}],
        "builder.memory": "64Gi", "triton.startupSeconds": 1200, "workloads.runAsUser": 2000,
        "artifacts.root": "s3://models/builds", "workloads.imagePullPolicy": "Always",
        "sourcePolicy.allowedPrefixes": ["s3://models/", "hf://my-org/"],
    }))
    s = OperatorSettings.from_env(env)
    assert s.operator_image == "ghcr.io/optimodel/optimodel-operator@sha256:" + "a" * 64
    assert s.builder_image == "ghcr.io/optimodel/optimodel-builder:0.2.0"
    assert s.triton_image == "registry.local/tritonserver:25.01-py3"
    assert s.gpu_tolerations == [{"key": "gpu", "operator": "Exists"}]
    assert (s.builder_memory, s.triton_startup_seconds, s.run_as_user) == ("64Gi", 1200, 2000)
    assert (s.artifact_root, s.image_pull_policy) == ("s3://models/builds", "Always")
    assert s.allowed_source_prefixes == ["s3://models/", "hf://my-org/"]  # re-enforced by the builder


def test_every_value_is_documented():
    """Each value and section in values.yaml has a comment right above it (inside blobs such as
    resources or probes, which are Kubernetes objects documented upstream, only the blob's key)."""
    blobs = {"resources", "podSecurityContext", "securityContext", "livenessProbe", "readinessProbe",
             "tolerations"}
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):(.*)$", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        in_blob = any(k in blobs for _, k in stack)
        stack.append((indent, key))
        if in_blob:
            continue
        above = lines[i - 1].strip() if i else ""
        if not above.startswith("#"):
            undocumented.append(".".join(k for _, k in stack))
    assert not undocumented, f"values without a comment: {undocumented}"


def test_schema_covers_every_value():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(v, s, path):
        assert s is not None, f"{path} is not in values.schema.json"
        if isinstance(v, dict) and "properties" in s:
            for key, sub in v.items():
                walk(sub, s["properties"].get(key), f"{path}.{key}")

    walk(values, schema, "values")


# --- generated files ------------------------------------------------------------------------------

def test_chart_crd_is_the_generated_crd(helm_bin):
    (crd,) = [o for o in template() if o["kind"] == "CustomResourceDefinition"]
    generated = crd_manifest()
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["name"] == generated["metadata"]["name"]
    assert generated["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    # the lead's crds/ copy is the same object
    assert yaml.safe_load((REPO / "crds" / "optimizedmodel.yaml").read_text())["spec"] == crd["spec"]


def test_crd_is_gated_and_keep_is_optional(helm_bin):
    assert not [o for o in template({"crds.enabled": False}) if o["kind"] == "CustomResourceDefinition"]
    (crd,) = [o for o in template({"crds.keep": False}) if o["kind"] == "CustomResourceDefinition"]
    assert "annotations" not in crd["metadata"]


def test_generated_chart_files_are_fresh(generator):
    for path, text in generator.render_chart_files().items():
        assert path.read_text() == text, (
            f"{path.relative_to(REPO)} is stale: run hack/render-chart-artifacts.py")


def test_plain_manifests_are_fresh(generator, helm_bin):
    path = generator.DEPLOY
    assert path.read_text() == generator.render_deploy(str(helm_bin)), (
        f"{path.relative_to(REPO)} is stale: run hack/render-chart-artifacts.py")


def test_adapter_rule_reaches_the_configmap(helm_bin):
    from optimodel.triton.metrics import adapter_rule

    (cm,) = [o for o in template({"prometheusAdapter.rulesConfigMap.enabled": True,
                                  "prometheusAdapter.rulesConfigMap.namespace": "monitoring"})
             if o["kind"] == "ConfigMap"]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert yaml.safe_load(cm["data"]["config.yaml"]) == {"rules": [adapter_rule()]}
    values = yaml.safe_load((CHART / "files" / "prometheus-adapter-values.yaml").read_text())
    assert values == {"rules": {"custom": [adapter_rule()]}}
    assert not [o for o in template() if o["kind"] == "ConfigMap"]


def test_generator_check_mode(generator, helm_bin):
    """`hack/render-chart-artifacts.py --check` (what CI / `make manifests` can run) passes."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "hack" / "render-chart-artifacts.py"), "--check",
                           "--helm", str(helm_bin)], capture_output=True, text=True, cwd="/", timeout=120,
                          env={"PYTHONSAFEPATH": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_crd_annotations_value(helm_bin):
    (crd,) = template({"crds.annotations": {"argocd.argoproj.io/sync-options": "Delete=false"}},
                      show_only=("templates/crd.yaml",))
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep",
                                              "argocd.argoproj.io/sync-options": "Delete=false"}


def test_argocd_application_example_renders(helm_bin, tmp_path):
    """The chart Application of examples/argocd/ renders with its values (the GitOps tier syncs
    it through a real Argo CD; this is the fast check that it stays valid)."""
    app = yaml.safe_load((REPO / "examples" / "argocd" / "apps" / "optimodel.yaml").read_text())
    source = app["spec"]["source"]
    assert (REPO / source["path"]).resolve() == CHART
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(source["helm"]["valuesObject"]))
    out = helm("template", source["helm"]["releaseName"], str(CHART), "-f", str(values),
               "--namespace", app["spec"]["destination"]["namespace"]).stdout
    assert "s3://optimodel-artifacts/builds" in out and "artifact-store" in out
