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

# Source URIs (spec.model.uri and spec.optimization.calibration.uri): well-formed, no traversal,
# no credentials. Nothing here reaches a shell, but none of it is admitted either.
URI_FIELDS = {"model.uri": "model.uri", "calibration": "optimization.calibration.uri"}
MALFORMED_URIS = {
    "space": "s3://models/my model.onnx",
    "semicolon": "https://x/m.onnx; rm -rf /",
    "semicolon-no-space": "https://x/m.onnx;id",
    "command-substitution": "s3://models/$(id)/m.onnx",
    "backtick": "s3://models/`id`.onnx",
    "newline": "s3://models/m.onnx\nrm -rf /",
    "tab": "s3://models/m.onnx\t",
    "pipe": "https://x/m.onnx|sh",
    "ampersand": "https://x/m.onnx&id",
    "redirect": "s3://models/m.onnx>/etc/passwd",
    "quote": "s3://models/m'.onnx",
    "backslash": "pvc://claim\\..\\x",
    "nul": "s3://models/m.onnx\x00",
    "no-break-space": "s3://models/m\u00a0.onnx",
    "bidi-override": "s3://models/m\u202e.onnx",
}
TRAVERSAL_URIS = {
    "pvc-up-two": "pvc://claim/../../x",
    "pvc-claim-parent": "pvc://claim/..",
    "s3-up": "s3://models/../secrets/m.onnx",
    "https-encoded-up": "https://host/models/%2e%2e/admin",
}
CREDENTIAL_URIS = {
    "userinfo": "s3://user:secret@host/b/m",
    "https-userinfo": "https://user:secret@host/m.onnx",
    "user-only": "https://token@host/m.onnx",
    "x-amz-signature": "https://bucket.s3.amazonaws.com/m.onnx?X-Amz-Signature=0123abcd",
    "x-amz-credential-lower": "https://bucket.s3.amazonaws.com/m.onnx?x-amz-credential=AKIA%2F",
    "presigned-full": "https://bucket.s3.amazonaws.com/m.onnx?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                      "&X-Amz-Credential=AKIA%2F20250101&X-Amz-Signature=0123abcd",
    "azure-sas-sig": "https://acct.blob.core.windows.net/c/m.onnx?sv=2022&sig=abc",
    "token": "https://host/m.onnx?token=abc",
    "access-token": "https://host/m.onnx?access_token=abc",
    "signature": "https://host/m.onnx?Signature=abc",
    "aws-access-key-id": "https://host/m.onnx?AWSAccessKeyId=AKIA",
}
BAD_PVC_URIS = {
    "no-claim": "pvc:///data/m.onnx",
    "claim-not-a-name": "pvc://My_Claim/m.onnx",
}


def _uri_case(kind: str, name: str, uri: str, message: str):
    """A CASES row: ``uri`` set at the field (path under spec) of ``kind``; the expected message is
    the field's name followed by ``message``."""
    field = URI_FIELDS[kind]
    return (f"{kind} {name}", with_(field, uri), f"spec.{field}", field + message)


for _kind in URI_FIELDS:
    CASES += [_uri_case(_kind, n, u, " must be a well-formed URI: no whitespace, control characters "
                        "or shell metacharacters") for n, u in MALFORMED_URIS.items()]
    CASES += [_uri_case(_kind, n, u, " must not contain '..' path segments") for n, u in TRAVERSAL_URIS.items()]
    CASES += [_uri_case(_kind, n, u, " must not carry credentials") for n, u in CREDENTIAL_URIS.items()]
    CASES += [_uri_case(_kind, n, u, ": a pvc:// URI is pvc://<claim>/<path>") for n, u in BAD_PVC_URIS.items()]
CASES += [
    ("credentials message says where they go", with_("model.uri", "s3://user:secret@host/b/m"),
     "spec.model.uri", "put them in a Secret named by spec.model.credentialsSecret"),
    ("calibration ftp scheme", with_("optimization.calibration.uri", "ftp://host/c.npz"),
     "spec.optimization.calibration.uri",
     "optimization.calibration.uri must start with one of s3://, pvc://, https://, hf://"),
    ("uri too long", with_("model.uri", "s3://models/" + "m" * 2048), "spec.model.uri",
     "may not be more than 2048 bytes"),
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


GOOD_URIS = [
    "s3://models/minilm/", "s3://models/a-b_c.d/m~1.onnx", "s3://models/with%20space.onnx",
    "pvc://my-claim/models/bert", "pvc://my.claim", "pvc://claim/./m.onnx", "pvc://claim/..x/m.onnx",
    "https://host:8443/m.onnx?download=true", "https://host/m.onnx#frag", "hf://org/name@abc123",
    "hf://my-org/all-MiniLM-L6-v2", "https://host/m.onnx?tokenizer=fast",
]


@pytest.mark.parametrize("uri", GOOD_URIS)
def test_well_formed_source_uris_are_accepted(cluster, crd, namespace, uri):
    """The URI rules refuse only what they name: ordinary sources, percent-encoding, a port, a
    query without credentials, a Hugging Face revision and dotted file names all pass."""
    custom = client.CustomObjectsApi(cluster.api_client())
    spec = {**BASE, "model": {**BASE["model"], "uri": uri}, "optimization": {"calibration": {"uri": uri}}}
    created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "OptimizedModel",
        "metadata": {"name": "good"}, "spec": spec})
    assert created["spec"]["model"]["uri"] == uri
    assert created["spec"]["optimization"]["calibration"]["uri"] == uri


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
