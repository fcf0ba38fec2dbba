"""Triton's control API is closed in the operator's pods: checked against a real Triton.

The finding: Triton ran with ``--model-control-mode=explicit`` behind a Service that
authenticates nobody, so any pod in the cluster could unload the model (a one-request denial of
service) or load one of its own (with the Python backend, a model is code). The server here is
started with the *operator's own* Triton arguments, read from ``manifests.triton_deployment``
(never a copy), minus only what the local harness must set itself: the repository path and the
ports. Change the operator's flags and this test runs the new ones.

What must hold: load and unload are refused over HTTP and gRPC and the model stays ready; the
repository index answers (read-only: the one model's name, version and state, which the
inference API's ``/v2/models/<name>`` already tells anyone); inference, health and metrics work.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from optimodel.api.spec import OptimizedModelSpec
from optimodel.api.status import EngineStatus
from optimodel.operator import manifests
from optimodel.operator.settings import OperatorSettings
from optimodel.serving.loadgen import infer

pytestmark = pytest.mark.triton

MODEL = "tiny"  # the fixture model's name; the operator names the served model after the object
# Set by LocalTriton itself: the temp repository, free ports on 127.0.0.1, and (explicit mode
# only) one --load-model per model it is asked to wait for.
HARNESS_FLAGS = ("--model-repository", "--http-port", "--grpc-port", "--metrics-port", "--load-model")


def operator_triton_args() -> list[str]:
    """The Triton container's arguments exactly as the operator renders them for MODEL."""
    settings = OperatorSettings(builder_image="b", operator_image="o", triton_image="t",
                                artifact_root="pvc://artifacts/builds", prometheus_url="http://p")
    spec = OptimizedModelSpec.model_validate({"model": {"uri": "pvc://models/tiny", "format": "onnx"}})
    ref = manifests.ModelRef(MODEL, "ml", "uid-1", spec)
    engine = EngineStatus(key="ab" * 32, uri="pvc://artifacts/builds/ml/tiny/x")
    deployment = manifests.triton_deployment(ref, engine, settings)
    (triton,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"]
    assert triton["command"] == ["tritonserver"]
    return list(triton["args"])


def split_args(args: list[str]) -> tuple[str, list[str]]:
    """``(model control mode, every other security-relevant flag)`` of the operator's args."""
    modes = [a.split("=", 1)[1] for a in args if a.startswith("--model-control-mode=")]
    assert len(modes) == 1, args
    rest = [a for a in args
            if a.split("=", 1)[0] not in (*HARNESS_FLAGS, "--model-control-mode")]
    return modes[0], rest


def test_operator_args_render_no_explicit_control():
    args = operator_triton_args()
    mode, _ = split_args(args)
    assert mode == "none"
    assert not [a for a in args if a.startswith("--load-model")]  # only valid in explicit mode
    assert "--strict-readiness=true" in args and "--exit-on-error=true" in args


def test_control_api_refused_inference_health_metrics_work(start_triton, make_repo, tiny_encoder):
    import requests
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    mode, flags = split_args(operator_triton_args())
    triton = start_triton(make_repo(MODEL), [MODEL], model_control_mode=mode, extra_args=flags)
    url = triton.endpoints.http_url
    # The harness really ran the operator's flags (and not its own explicit default).
    command = triton.command(triton.endpoints, triton.repository, triton.repository)
    assert f"--model-control-mode={mode}" in command and all(f in command for f in flags)

    def ready() -> bool:
        return requests.get(f"{url}/v2/models/{MODEL}/ready", timeout=10).status_code == 200

    # HTTP: unload and load are refused (503: the server core refuses, no header unlocks it).
    for action in ("unload", "load"):
        resp = requests.post(f"{url}/v2/repository/models/{MODEL}/{action}", timeout=30)
        assert not resp.ok and resp.status_code == 503, (action, resp.status_code, resp.text)
        assert "not allowed" in resp.json()["error"]
        assert ready(), f"{MODEL} not ready after a refused {action}"
    resp = requests.post(f"{url}/v2/repository/models/{MODEL}/unload", timeout=30,
                         json={"parameters": {"unload_dependents": True}})
    assert resp.status_code == 503 and ready()

    # Loading a model of one's own (config + model.py sent in the request: code execution in the
    # pod under explicit control) is refused too, and nothing new appears.
    evil_py = b"import os\nclass TritonPythonModel:\n    def execute(self, r):\n        os.system('id')\n"
    evil_config = json.dumps({"name": "evil", "backend": "python", "max_batch_size": 0,
                              "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
                              "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}]})
    resp = requests.post(f"{url}/v2/repository/models/evil/load", timeout=30, json={"parameters": {
        "config": evil_config, "file:1/model.py": base64.b64encode(evil_py).decode()}})
    assert resp.status_code == 503, resp.text
    assert requests.get(f"{url}/v2/models/evil/ready", timeout=10).status_code != 200

    # The index answers, read-only and harmless: exactly what /v2/models/<name> tells anyone.
    resp = requests.post(f"{url}/v2/repository/index", timeout=10)
    assert resp.status_code == 200
    metadata = requests.get(f"{url}/v2/models/{MODEL}", timeout=10).json()
    assert resp.json() == [{"name": metadata["name"], "version": metadata["versions"][0],
                            "state": "READY"}]

    # gRPC: the same refusals (UNAVAILABLE), the model still ready.
    client = grpcclient.InferenceServerClient(triton.endpoints.grpc)
    try:
        for call in (lambda: client.unload_model(MODEL), lambda: client.load_model(MODEL),
                     lambda: client.load_model("evil", config=evil_config,
                                               files={"file:1/model.py": evil_py})):
            with pytest.raises(InferenceServerException) as refused:
                call()
            assert "UNAVAILABLE" in str(refused.value.status()) and "not allowed" in str(refused.value)
        assert client.is_model_ready(MODEL) and not client.is_model_ready("evil")
    finally:
        client.close()

    # Inference over both protocols, health, and the metrics port all work.
    for protocol, batch in (("http", 3), ("grpc", 2)):
        feeds = tiny_encoder.inputs(batch, seed=batch)
        np.testing.assert_allclose(infer(triton, MODEL, feeds, ["embedding"], protocol)["embedding"], tiny_encoder.reference(**feeds),
                                   atol=1e-5)
    assert requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
    assert requests.get(f"{url}/v2/health/live", timeout=10).status_code == 200
    assert triton.metric("nv_inference_request_success", MODEL) == 2
    assert triton.running and ready()
