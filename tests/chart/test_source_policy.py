"""The chart's admission-time source policy (``sourcePolicy.allowedPrefixes``): a
ValidatingAdmissionPolicy (CEL) and its binding, rendered only when prefixes are set.

Offline: what renders, for which values, and that it validates against the Kubernetes schemas.
On the real API server: the rendered objects as the chart ships them refuse a model or
calibration URI outside the prefixes at create time, with a message naming the field and the
allowed prefixes; accept an allowed one; leave URIs an object already had alone on update (so
a policy added later never blocks edits, finalizers or deletion of older models); and act only
in the watched namespaces when ``watchNamespaces`` is set.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from chart import CHART, helm, release_name, set_args, template
from kubernetes import client
from polling import wait_for
from testcluster import make_namespace

REPO = Path(__file__).resolve().parents[2]
CRD_FILE = REPO / "crds" / "optimizedmodel.yaml"
GROUP, VERSION, PLURAL = "optimodel.dev", "v1alpha1", "optimizedmodels"
TEMPLATE = "templates/source-policy.yaml"
PREFIXES = ["s3://models/", "hf://my-org/"]
KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def policy_objects(values: dict, **kwargs) -> list[dict]:
    """The source policy's objects (the chart also ships a credentials policy of the same kinds)."""
    return [o for o in template(values, **kwargs)
            if o["kind"] in KINDS and o["metadata"]["name"].endswith("-source-policy")]


# --- rendering (no cluster) -------------------------------------------------------------------

def test_no_prefixes_no_policy(helm_bin):
    assert policy_objects({}) == []
    assert policy_objects({"sourcePolicy.allowedPrefixes": []}) == []


def test_prefixes_render_a_policy_and_a_cluster_wide_binding(helm_bin):
    objects = policy_objects({"sourcePolicy.allowedPrefixes": PREFIXES})
    assert [o["kind"] for o in objects] == list(KINDS)
    policy, binding = objects
    for obj in objects:
        assert obj["apiVersion"] == "admissionregistration.k8s.io/v1"
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
        assert obj["metadata"]["name"] == "optimodel-source-policy"
    assert binding["spec"] == {"policyName": "optimodel-source-policy", "validationActions": ["Deny"]}
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"], rule["operations"]) == (
        ["optimodel.dev"], ["optimizedmodels"], ["CREATE", "UPDATE"])
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert json.loads(variables["allowed"]) == PREFIXES  # a JSON list is a CEL list literal


def test_watched_namespaces_scope_the_binding(helm_bin):
    _, binding = policy_objects({"sourcePolicy.allowedPrefixes": PREFIXES, "watchNamespaces": ["ml-a", "ml-b"]})
    assert binding["spec"]["matchResources"] == {"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ml-a", "ml-b"]}]}}


def test_lint_is_clean_with_a_policy(helm_bin):
    out = helm("lint", "--strict", str(CHART), *set_args({"sourcePolicy.allowedPrefixes": PREFIXES})).stdout
    assert "0 chart(s) failed" in out and "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize("prefixes", [
    ["s3://models"],            # no trailing "/": would also allow s3://models-evil/
    ["gs://bucket/"],           # a scheme the builder cannot read
    ["s3://models/'||true||'/"],  # quotes and shell metacharacters
    ["s3://models/", "s3://models/"],
    "s3://models/",             # a string, not a list
])
def test_values_schema_refuses_bad_prefixes(helm_bin, prefixes):
    proc = helm("template", "x", str(CHART), *set_args({"sourcePolicy.allowedPrefixes": prefixes}), check=False)
    assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr, proc.stderr


# --- on the real API server -------------------------------------------------------------------

def model(name: str, uri: str, calibration: str | None = None) -> dict:
    spec: dict = {"model": {"uri": uri, "format": "onnx"}}
    if calibration:
        spec["optimization"] = {"calibration": {"uri": calibration}}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OptimizedModel", "metadata": {"name": name},
            "spec": spec}


def refusal(custom: client.CustomObjectsApi, namespace: str, body: dict) -> str | None:
    """The API server's message if it refuses to create ``body``; None if it created it (the
    object is then deleted again, so the caller can retry under the same name)."""
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    except client.ApiException as exc:
        return f"{exc.status} " + json.loads(exc.body)["message"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body["metadata"]["name"])
    wait_for(lambda: not _exists(custom, namespace, body["metadata"]["name"]), timeout=30, what="deletion")
    return None


def _exists(custom, namespace, name) -> bool:
    try:
        custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return True
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise


@pytest.fixture
def crd(cluster):
    cluster.kubectl("apply", "-f", str(CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/{PLURAL}.{GROUP}")


@pytest.fixture
def other_namespace(cluster):
    name = make_namespace(cluster)
    yield name
    client.CoreV1Api(cluster.api_client()).delete_namespace(name, propagation_policy="Background")


@pytest.mark.cluster
def test_source_policy_on_the_api_server(cluster, crd, namespace, other_namespace):
    custom = client.CustomObjectsApi(cluster.api_client())
    # A model from before the policy, with a source the policy will not allow.
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                           model("older", "s3://legacy/m.onnx", "s3://legacy/c.npz"))
    release = release_name(namespace)  # cluster-scoped names unique to this test
    objects = policy_objects({"sourcePolicy.allowedPrefixes": PREFIXES, "watchNamespaces": [namespace]},
                             release=release, namespace=namespace, show_only=(TEMPLATE,))
    assert [o["kind"] for o in objects] == list(KINDS)
    name = objects[0]["metadata"]["name"]
    try:
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))

        # The expressions type-check against the CRD's schema (the API server says so in status).
        def type_checked():
            vap = json.loads(cluster.kubectl("get", "validatingadmissionpolicy", name, "-o", "json").stdout)
            status = vap.get("status") or {}
            return status if status.get("observedGeneration") == vap["metadata"]["generation"] else None
        status = wait_for(type_checked, timeout=30, interval=0.5, what="policy type checking")
        assert not (status.get("typeChecking") or {}).get("expressionWarnings"), status

        # Policies take effect after a short propagation delay: retry until the refusal comes.
        disallowed = model("m", "s3://elsewhere/m.onnx")
        message = wait_for(lambda: refusal(custom, namespace, disallowed), timeout=60, interval=0.5,
                           what="the source policy to take effect")
        assert message.startswith("403 "), message
        assert "spec.model.uri is not an allowed model source" in message, message
        assert "must start with one of s3://models/, hf://my-org/" in message, message
        assert "sourcePolicy.allowedPrefixes" in message, message

        # Allowed sources are admitted, model and calibration alike.
        created = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, model("ok", "s3://models/minilm/", "hf://my-org/calibration"))
        assert created["spec"]["model"]["uri"] == "s3://models/minilm/"

        # A disallowed calibration source is refused, naming that field.
        message = refusal(custom, namespace, model("cal", "s3://models/m.onnx", "https://elsewhere/c.npz"))
        assert message and message.startswith("403 "), message
        assert "spec.optimization.calibration.uri is not an allowed source" in message, message
        assert "s3://models/, hf://my-org/" in message, message
        assert "spec.model.uri" not in message, message

        # Updates: changing a source to a disallowed one is refused ...
        with pytest.raises(client.ApiException) as err:
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ok",
                                                  {"spec": {"model": {"uri": "s3://elsewhere/m.onnx"}}})
        assert err.value.status == 403 and "spec.model.uri is not an allowed" in err.value.body
        with pytest.raises(client.ApiException) as err:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "ok",
                {"spec": {"optimization": {"calibration": {"uri": "s3://elsewhere/c.npz"}}}})
        assert err.value.status == 403 and "spec.optimization.calibration.uri" in err.value.body
        # ... while an older model keeps the sources it had: labels, finalizers and other spec
        # edits go through, and so does deletion.
        older = custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "older",
            {"metadata": {"labels": {"team": "a"}, "finalizers": ["optimodel.dev/test"]},
             "spec": {"autoscaling": {"maxReplicas": 3}}})
        assert older["spec"]["model"]["uri"] == "s3://legacy/m.onnx"
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "older",
                                              {"metadata": {"finalizers": None}})
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "older")
        wait_for(lambda: not _exists(custom, namespace, "older"), timeout=30, what="deletion")
        # Creating it again is a create: checked.
        assert (refusal(custom, namespace, model("older", "s3://legacy/m.onnx")) or "").startswith("403 ")

        # The binding covers the watched namespaces only.
        assert refusal(custom, other_namespace, model(f"m-{uuid.uuid4().hex[:6]}", "s3://elsewhere/m.onnx")) is None
    finally:
        cluster.kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name,
                        "--ignore-not-found", "--wait=false", check=False)
