"""Malformed manifests are refused by the API server itself, with a message naming the field.

The generated CRD carries the validation (types, enums, ranges, required fields, CEL rules), so
``kubectl apply`` fails fast and nothing reaches the operator. Each row: a spec edit applied to
a valid base, the field path the error must name, and a fragment of the expected message.
"""

from __future__ import annotations

import copy
import json

import pytest
from kubernetes import client
from opharness import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.cluster

BASE = {"model": {"uri": "s3://models/minilm/", "format": "huggingface"}}


def with_(path: str, value):
    """BASE with ``value`` set at a dotted ``path`` (``None`` deletes)."""
    spec = copy.deepcopy(BASE)
    keys = path.split(".")
    node = spec
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is None:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return spec


CASES = [
    ("missing model", {"optimization": {}}, "spec.model", "Required value"),
    ("missing uri", with_("model.uri", None), "spec.model.uri", "Required value"),
    ("missing format", with_("model.format", None), "spec.model.format", "Required value"),
    ("ftp scheme", with_("model.uri", "ftp://host/model.onnx"), "spec.model.uri",
     "uri must start with one of s3://, pvc://, https://, hf://"),
    ("plain http", with_("model.uri", "http://host/model.onnx"), "spec.model.uri", "must start with one of"),
    ("unknown format", with_("model.format", "tensorflow"), "spec.model.format",
     'supported values: "onnx", "torchscript", "huggingface"'),
    ("secret name with spaces", with_("model.credentialsSecret", "my creds"),
     "spec.model.credentialsSecret", "should match"),
    ("torchscript without inputs", with_("model.format", "torchscript"), "spec.model.inputs",
     "model.inputs is required for format torchscript"),
    ("duplicate input names", with_("model.inputs", [
        {"name": "x", "dtype": "FP32", "shape": [-1, 3]}, {"name": "x", "dtype": "FP32", "shape": [-1, 3]}]),
     "spec.model.inputs[1]", "Duplicate value"),
    ("bad input dtype", with_("model.inputs", [{"name": "x", "dtype": "FLOAT", "shape": [-1]}]),
     "spec.model.inputs[0].dtype", "supported values"),
    ("zero dimension", with_("model.inputs", [{"name": "x", "dtype": "FP32", "shape": [-1, 0]}]),
     "spec.model.inputs[0].shape", "shape dimensions must be positive or -1"),
    ("unknown precision", with_("optimization", {"precision": "int4"}), "spec.optimization.precision",
     'supported values: "auto", "fp32", "fp16", "bf16", "int8", "fp8"'),
    ("int8 without calibration", with_("optimization", {"precision": "int8"}),
     "spec.optimization.calibration", "precision int8 and fp8 need calibration.uri"),
    ("calibration with neither uri nor synthetic", with_("optimization", {"precision": "fp16", "calibration": {}}),
     "spec.optimization.calibration", "calibration needs a uri, or synthetic: true"),
    ("fp8 on onnxruntime", with_("optimization", {"precision": "fp8", "target": "onnxruntime",
                                                  "calibration": {"synthetic": True}}),
     "spec.optimization.precision", "precision fp8 needs target tensorrt or auto"),
    ("unknown target", with_("optimization", {"target": "openvino"}), "spec.optimization.target",
     "supported values"),
    ("batch too large", with_("optimization", {"maxBatchSize": 100000}), "spec.optimization.maxBatchSize",
     "should be less than or equal to 4096"),
    ("batch zero", with_("optimization", {"maxBatchSize": 0}), "spec.optimization.maxBatchSize",
     "should be greater than or equal to 1"),
    ("cosine threshold above 1", with_("optimization", {"accuracy": {"metric": "cosine", "threshold": 1.5}}),
     "spec.optimization.accuracy.threshold", "threshold must be within 0..1"),
    ("unknown metric", with_("optimization", {"accuracy": {"metric": "mse"}}),
     "spec.optimization.accuracy.metric", "supported values"),
    ("bad sparsity pattern", with_("optimization", {"sparsity": {"pattern": "4:8"}}),
     "spec.optimization.sparsity.pattern", 'supported values: "2:4", "unstructured"'),
    ("calibration samples too few", with_("optimization", {"calibration": {"synthetic": True, "samples": 2}}),
     "spec.optimization.calibration.samples", "should be greater than or equal to 8"),
    ("gpu count negative", with_("serving", {"gpu": {"count": -1}}), "spec.serving.gpu.count",
     "should be greater than or equal to 0"),
    ("gpu product on a CPU model", with_("serving", {"gpu": {"count": 0, "product": "NVIDIA-L4"}}),
     "spec.serving.gpu.product", "serving.gpu.product needs serving.gpu.count of at least 1"),
    ("tensorrt on a CPU model", {**BASE, "optimization": {"target": "tensorrt"}, "serving": {"gpu": {"count": 0}}},
     "spec.optimization.target", "a model served on CPU (serving.gpu.count 0) needs optimization.target"),
    ("preferred batch above max", {**BASE, "optimization": {"maxBatchSize": 8},
                                   "serving": {"dynamicBatching": {"preferredBatchSizes": [4, 16]}}},
     "spec.serving.dynamicBatching.preferredBatchSizes", "must each be at most optimization.maxBatchSize"),
    ("negative queue delay", with_("serving", {"dynamicBatching": {"maxQueueDelayMicroseconds": -1}}),
     "spec.serving.dynamicBatching.maxQueueDelayMicroseconds", "should be greater than or equal to 0"),
    ("unknown rollout", with_("serving", {"rollout": "Recreate"}), "spec.serving.rollout",
     'supported values: "Surge", "GPUFrugal"'),
    ("resources with gpu key", with_("serving", {"resources": {"nvidia.com/gpu": "2"}}),
     "spec.serving.resources", "resources keys must be cpu, memory or ephemeral-storage"),
    ("min above max replicas", with_("autoscaling", {"minReplicas": 5, "maxReplicas": 2}),
     "spec.autoscaling.minReplicas", "minReplicas must be less than or equal to maxReplicas"),
    ("zero target queue depth", with_("autoscaling", {"targetQueueDepth": 0}),
     "spec.autoscaling.targetQueueDepth", "should be greater than 0"),
    ("unknown autoscaling engine", with_("autoscaling", {"engine": "vpa"}), "spec.autoscaling.engine",
     'supported values: "auto", "hpa", "keda"'),
    ("string where integer", with_("autoscaling", {"maxReplicas": "many"}), "spec.autoscaling.maxReplicas",
     'must be of type integer'),
]


@pytest.mark.parametrize("spec,field,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_manifest_is_refused_naming_the_field(cluster, crd, namespace, spec, field, message):
    custom = client.CustomObjectsApi(cluster.api_client())
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "OptimizedModel",
            "metadata": {"name": "bad"}, "spec": spec}
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    assert err.value.status == 422
    text = json.loads(err.value.body)["message"]
    assert field in text, text
    assert message in text, text


def test_valid_base_is_accepted(cluster, crd, namespace):
    custom = client.CustomObjectsApi(cluster.api_client())
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "OptimizedModel",
        "metadata": {"name": "good"}, "spec": BASE})
    assert created["spec"]["optimization"]["precision"] == "auto"  # server-side defaults applied
    assert created["spec"]["serving"]["dynamicBatching"]["maxQueueDelayMicroseconds"] == 100


@pytest.mark.parametrize("name", ["m.v2", "9lives", "x" * 64], ids=["dot", "leading-digit", "64-chars"])
def test_names_that_cannot_name_children_are_refused(cluster, crd, namespace, name):
    """A name valid for a custom resource (DNS-1123 subdomain) but not for the model's Service
    or labels would otherwise fail later, on a child, with nobody told."""
    custom = client.CustomObjectsApi(cluster.api_client())
    with pytest.raises(client.ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "OptimizedModel",
            "metadata": {"name": name}, "spec": BASE})
    assert err.value.status == 422
    text = json.loads(err.value.body)["message"]
    assert "metadata.name must be a DNS-1035 label" in text, text
