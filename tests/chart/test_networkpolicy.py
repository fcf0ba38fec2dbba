"""The chart's optional NetworkPolicy for the operator's Triton pods (``networkPolicy.*``).

Why these checks: a NetworkPolicy fails silently. A rule rendered without ``from`` admits every
source, a podSelector that drifts from the labels the operator puts on its pods protects
nothing, a port list that misses 8002 starves the autoscalers of their metric, and a policy in
the release namespace guards no Triton pod at all (they run in the model namespaces). So the
rendering is pinned here offline, validated against the Kubernetes schema, and then applied to
the real API server (dry run and for real, read back), where the selector is also shown to pick
exactly the operator's Triton pods. What no test here can show is *enforcement*: that is the CNI
plugin's job, and the local real node's bridge plugin does not implement NetworkPolicy.
"""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
import yaml
from chart import CHART, helm, set_args, template

from optimodel.api.report import EngineInfo
from optimodel.api.spec import OptimizedModelSpec
from optimodel.operator import manifests as m
from optimodel.operator.settings import OperatorSettings

SHOW = ("templates/networkpolicy.yaml",)
SCHEMA_VERSION = kubernetes_validate.latest_version()
INFERENCE_PORTS = [{"protocol": "TCP", "port": m.HTTP_PORT}, {"protocol": "TCP", "port": m.GRPC_PORT}]
METRICS_PORTS = [{"protocol": "TCP", "port": m.METRICS_PORT}]
NAME_KEY = "kubernetes.io/metadata.name"

ON = {"networkPolicy.enabled": True}
NAMESPACED = {"watchNamespaces": ["ml-a", "ml-b"]}
FULL = {**ON, **NAMESPACED,
        "networkPolicy.inference.fromNamespaces": ["gateway", "apps"],
        "networkPolicy.inference.fromPodLabels": {"optimodel.dev/client": "true", "team": "search"}}

SETTINGS = OperatorSettings(builder_image="reg/builder:1", operator_image="reg/operator:1",
                            triton_image="reg/triton:1", artifact_root="s3://engines/builds")
KEY = "ab" * 32


def policies(values: dict | None = None, namespace: str = "optimodel-system") -> list[dict]:
    objects = [o for o in template(values, namespace=namespace) if o["kind"] == "NetworkPolicy"]
    assert all(o["apiVersion"] == "networking.k8s.io/v1" for o in objects)
    return objects


def namespaces_peer(names: list[str]) -> dict:
    return {"namespaceSelector": {"matchExpressions": [{"key": NAME_KEY, "operator": "In", "values": names}]}}


def model_pods(namespace: str) -> dict[str, dict]:
    """The pod templates the operator renders for one CPU model: Triton server and builder."""
    spec = OptimizedModelSpec.model_validate({
        "model": {"uri": "s3://models/minilm", "format": "huggingface"},
        "serving": {"gpu": {"count": 0}},
    })
    model = m.ModelRef("minilm", namespace, "uid-1", spec)
    engine = EngineInfo(key=KEY, uri=f"s3://engines/builds/{namespace}/minilm/{KEY}", model_name="minilm",
                        precision="int8", target="onnxruntime", platform="onnxruntime_onnx",
                        runtime_version="onnxruntime 1.20.1", size_bytes=23_000_000)
    server = m.triton_deployment(model, engine, SETTINGS)["spec"]["template"]
    builder = m.builder_job(model, KEY, SETTINGS)["spec"]["template"]
    return {"server": server, "builder": builder}


def selects(selector: dict, labels: dict) -> bool:
    assert set(selector) == {"matchLabels"}, selector
    return selector["matchLabels"].items() <= labels.items()


# --- rendering ---------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [{}, NAMESPACED, {"networkPolicy.namespaces": ["ml"]}],
                         ids=["cluster-wide", "namespaced", "namespaces-listed"])
def test_off_by_default(helm_bin, values):
    assert policies(values) == []


def test_one_policy_per_watched_namespace(helm_bin):
    objects = policies({**ON, **NAMESPACED}, namespace="ops")
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects] == [
        ("ml-a", "optimodel-triton"), ("ml-b", "optimodel-triton")]  # never the release namespace
    for o in objects:
        assert o["metadata"]["labels"]["app.kubernetes.io/instance"] == "optimodel"


def test_listed_namespaces_win_over_watched_ones(helm_bin):
    objects = policies({**ON, **NAMESPACED, "networkPolicy.namespaces": ["serving"]})
    assert [o["metadata"]["namespace"] for o in objects] == ["serving"]
    objects = policies({**ON, "networkPolicy.namespaces": ["ml", "ml-2"]})  # cluster-wide mode
    assert [o["metadata"]["namespace"] for o in objects] == ["ml", "ml-2"]


def test_cluster_wide_mode_without_namespaces_is_refused(helm_bin):
    proc = helm("template", "x", str(CHART), *set_args(ON), check=False)
    assert proc.returncode != 0
    assert "networkPolicy.enabled needs networkPolicy.namespaces in cluster-wide mode" in proc.stderr


def test_selector_picks_the_triton_pods_and_nothing_else_of_a_model(helm_bin):
    (policy, _) = policies({**ON, **NAMESPACED})
    selector = policy["spec"]["podSelector"]
    pods = model_pods("ml-a")
    assert selects(selector, pods["server"]["metadata"]["labels"])
    assert not selects(selector, pods["builder"]["metadata"]["labels"])
    # The operator's own pod carries the chart's labels (component operator): not selected.
    (deployment,) = [o for o in template(NAMESPACED) if o["kind"] == "Deployment"]
    assert not selects(selector, deployment["spec"]["template"]["metadata"]["labels"])
    # nameOverride renames the chart's objects, not the labels the operator gives its pods.
    (renamed, _) = policies({**ON, **NAMESPACED, "nameOverride": "om"})
    assert renamed["spec"]["podSelector"] == selector


def test_ingress_rules_admit_inference_and_metrics_only(helm_bin):
    pods = model_pods("ml-a")
    (triton,) = pods["server"]["spec"]["containers"]
    assert {p["containerPort"] for p in triton["ports"]} == {8000, 8001, 8002}
    for policy in policies(FULL):
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]  # egress open: staging fetches the engine
        assert "egress" not in spec
        inference, metrics = spec["ingress"]
        assert inference == {"ports": INFERENCE_PORTS, "from": [
            namespaces_peer(["gateway", "apps"]),
            # a podSelector alone: pods of the policy's (the model's) own namespace
            {"podSelector": {"matchLabels": {"optimodel.dev/client": "true", "team": "search"}}},
        ]}
        assert metrics == {"ports": METRICS_PORTS, "from": [namespaces_peer(["monitoring"])]}


def test_default_sources_admit_only_prometheus(helm_bin):
    (policy, _) = policies({**ON, **NAMESPACED})
    assert policy["spec"]["ingress"] == [{"ports": METRICS_PORTS, "from": [namespaces_peer(["monitoring"])]}]


@pytest.mark.parametrize("values, expected", [
    ({"networkPolicy.inference.fromNamespaces": ["gateway"]},
     [{"ports": INFERENCE_PORTS, "from": [namespaces_peer(["gateway"])]}]),
    ({"networkPolicy.inference.fromPodLabels": {"role": "client"}},
     [{"ports": INFERENCE_PORTS, "from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]),
    ({}, []),
], ids=["namespaces-only", "labels-only", "nobody"])
def test_a_rule_never_lacks_sources(helm_bin, values, expected):
    """An ingress rule without `from` would admit every source: with no source configured the
    rule is left out, and with no rule at all every ingress to the Triton pods is denied."""
    (policy,) = policies({**ON, "networkPolicy.namespaces": ["ml"],
                          "networkPolicy.metrics.fromNamespaces": [], **values})
    assert policy["spec"]["ingress"] == expected
    assert policy["spec"]["policyTypes"] == ["Ingress"]


@pytest.mark.parametrize("values", [{**ON, **NAMESPACED}, FULL,
                                    {**ON, "networkPolicy.namespaces": ["ml"],
                                     "networkPolicy.metrics.fromNamespaces": []}],
                         ids=["default-sources", "all-sources", "deny-all"])
def test_policies_validate_against_the_kubernetes_schema(helm_bin, values):
    objects = policies(values)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)


def test_helm_lint_is_clean_with_the_policy(helm_bin):
    out = helm("lint", "--strict", str(CHART), *set_args(FULL)).stdout
    assert "0 chart(s) failed" in out and "[WARNING]" not in out and "[ERROR]" not in out, out


@pytest.mark.parametrize("bad", [
    {"networkPolicy.enabled": "yes"},
    {"networkPolicy.namespaces": ["Not_A_Namespace"]},
    {"networkPolicy.namespaces": ["ml", "ml"]},
    {"networkPolicy.inference.fromNamespaces": "gateway"},
    {"networkPolicy.inference.fromPodLabels": {"role": 1}},
    {"networkPolicy.metrics.fromNamespaces": ["monitoring", 7]},
    {"networkPolicy.egress": {}},
    {"networkPolicy.inference.fromPods": {}},
])
def test_values_schema_refuses_bad_network_policy_values(helm_bin, bad):
    proc = helm("template", "x", str(CHART), *set_args(bad), check=False)
    assert proc.returncode != 0 and "values don't meet the specifications of the schema" in proc.stderr, proc.stderr


# --- the real API server ------------------------------------------------------------------------

@pytest.mark.cluster
def test_policy_is_accepted_and_selects_the_triton_pods_on_the_api_server(cluster, namespace, helm_bin):
    """Validation only: the API server admits and stores the policy, and its selector picks the
    operator's Triton pod. Whether traffic is filtered depends on the CNI plugin (see docs)."""
    from kubernetes import client

    values = {"networkPolicy.enabled": True, "networkPolicy.namespaces": [namespace],
              "networkPolicy.inference.fromNamespaces": [namespace, "gateway"],
              "networkPolicy.inference.fromPodLabels": {"optimodel.dev/client": "true"}}
    (rendered,) = policies(values)
    manifest = yaml.safe_dump(rendered)

    # Server-side dry run: the API server's own validation, nothing stored.
    out = cluster.kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=manifest).stdout
    assert json.loads(out)["spec"] == rendered["spec"]
    net = client.NetworkingV1Api(cluster.api_client())
    assert net.list_namespaced_network_policy(namespace).items == []
    # ... which does refuse what the schema does not allow (proof that the dry run validates).
    broken = json.loads(json.dumps(rendered))
    broken["spec"]["ingress"][0]["ports"][0]["protocol"] = "ICMP"
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(broken), check=False)
    assert proc.returncode != 0 and "Unsupported value" in proc.stderr, proc.stderr

    # For real, then read back: stored exactly as rendered.
    cluster.kubectl("apply", "--server-side", "--field-manager", "optimodel-tests", "-f", "-", input=manifest)
    stored = json.loads(cluster.kubectl("get", "networkpolicy", rendered["metadata"]["name"],
                                        "-n", namespace, "-o", "json").stdout)
    assert stored["spec"] == rendered["spec"]

    # Namespace peers match on the label the API server puts on every namespace.
    ns = client.CoreV1Api(cluster.api_client()).read_namespace(namespace)
    assert ns.metadata.labels[NAME_KEY] == namespace

    # The API server's label selection: the Triton pod is selected, the builder pod is not.
    core = client.CoreV1Api(cluster.api_client())
    for component, pod_template in model_pods(namespace).items():
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {**pod_template["metadata"], "name": f"minilm-{component}"},
               "spec": pod_template["spec"]}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(pod))
    selector = ",".join(f"{k}={v}" for k, v in stored["spec"]["podSelector"]["matchLabels"].items())
    selected = core.list_namespaced_pod(namespace, label_selector=selector).items
    assert [p.metadata.name for p in selected] == ["minilm-server"]
