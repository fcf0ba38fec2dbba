"""Triton's control API is closed in the operator's pods: checked against a real Triton.

The finding: Triton ran with ``--model-control-mode=explicit`` behind a Service that
authenticates nobody, so any pod in the cluster could unload the model (a one-request denial of
service) or load one of its own (with the Python backend, a model is code). The server here is
started with the *operator's own* Triton arguments, read from ``manifests.triton_deployment``
(never a copy), minus only what the local harness must set itself: the repository path and the
ports. Change the operator's flags and this test runs the new ones.

What must hold: load and unload are refused over HTTP and gRPC, with or without the admin key,
and the model stays ready; inference, health and metrics work. The repository index and the
other administrative endpoints (log settings and file, tracing, shared-memory registration)
answer only requests carrying the admin key, which no client has.
"""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from optimodel.api.report import EngineInfo
from optimodel.api.spec import OptimizedModelSpec
from optimodel.operator import manifests
from optimodel.operator.settings import OperatorSettings
from optimodel.serving.loadgen import infer

pytestmark = pytest.mark.triton

MODEL = "tiny"  # the fixture model's name; the operator names the served model after the object
# Set by LocalTriton itself: the temp repository, free ports on 127.0.0.1, and (explicit mode
# only) one --load-model per model it is asked to wait for.
HARNESS_FLAGS = ("--model-repository", "--http-port", "--grpc-port", "--metrics-port", "--load-model")
ADMIN_KEY = "a-random-key-from-the-operator-made-secret"  # what the Secret holds in the cluster


def kubelet_expand(args: list[str], env: dict[str, str]) -> list[str]:
    """``$(VAR)`` references in container args, expanded from the environment as the kubelet does."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), a)
            for a in args]


def operator_triton_args() -> list[str]:
    """The Triton container's arguments exactly as the operator renders them for MODEL, with the
    admin key the kubelet would expand from the operator's Secret."""
    settings = OperatorSettings(builder_image="b", operator_image="o", triton_image="t",
                                artifact_root="pvc://artifacts/builds", prometheus_url="http://p")
    spec = OptimizedModelSpec.model_validate({"model": {"uri": "pvc://models/tiny", "format": "onnx"}})
    ref = manifests.ModelRef(MODEL, "ml", "uid-1", spec)
    engine = EngineInfo(key="ab" * 32, uri="pvc://artifacts/builds/ml/tiny/x", model_name=MODEL, precision="fp32",
                        target="onnxruntime", platform="onnxruntime_onnx", runtime_version="onnxruntime 1.20.1",
                        size_bytes=1000)
    deployment = manifests.triton_deployment(ref, engine, settings)
    (triton,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"]
    assert triton["command"] == ["tritonserver"]
    (key_env,) = [e for e in triton["env"] if e["name"] == manifests.ADMIN_KEY_ENV]
    assert key_env["valueFrom"]["secretKeyRef"]["name"] == manifests.triton_admin_secret_name(ref)
    assert not any(ADMIN_KEY in a for a in triton["args"])  # the pod spec never holds the value
    return kubelet_expand(list(triton["args"]), {manifests.ADMIN_KEY_ENV: ADMIN_KEY})


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

    admin = {manifests.ADMIN_KEY_HEADER: ADMIN_KEY}
    # HTTP: unload and load are refused twice over. Without the admin key the frontend refuses
    # (403, restricted API); even with it the server core refuses (503: mode none, which no
    # header unlocks). The model stays ready.
    for action in ("unload", "load"):
        resp = requests.post(f"{url}/v2/repository/models/{MODEL}/{action}", timeout=30)
        assert resp.status_code == 403 and "restricted" in resp.json()["error"], (action, resp.text)
        resp = requests.post(f"{url}/v2/repository/models/{MODEL}/{action}", headers=admin, timeout=30)
        assert resp.status_code == 503 and "not allowed" in resp.json()["error"], (action, resp.text)
        assert ready(), f"{MODEL} not ready after a refused {action}"
    resp = requests.post(f"{url}/v2/repository/models/{MODEL}/unload", timeout=30, headers=admin,
                         json={"parameters": {"unload_dependents": True}})
    assert resp.status_code == 503 and ready()

    # Loading a model of one's own (config + model.py sent in the request: code execution in the
    # pod under explicit control) is refused too, key or not, and nothing new appears.
    evil_py = b"import os\nclass TritonPythonModel:\n    def execute(self, r):\n        os.system('id')\n"
    evil_config = json.dumps({"name": "evil", "backend": "python", "max_batch_size": 0,
                              "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
                              "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}]})
    evil = {"parameters": {"config": evil_config, "file:1/model.py": base64.b64encode(evil_py).decode()}}
    for headers, status in (({}, 403), (admin, 503)):
        resp = requests.post(f"{url}/v2/repository/models/evil/load", timeout=30, json=evil, headers=headers)
        assert resp.status_code == status, resp.text
    assert requests.get(f"{url}/v2/models/evil/ready", timeout=10).status_code != 200

    # The index is behind the key too; with it, it lists what /v2/models/<name> tells anyone.
    assert requests.post(f"{url}/v2/repository/index", timeout=10).status_code == 403
    resp = requests.post(f"{url}/v2/repository/index", headers=admin, timeout=10)
    assert resp.status_code == 200
    metadata = requests.get(f"{url}/v2/models/{MODEL}", timeout=10).json()
    assert resp.json() == [{"name": metadata["name"], "version": metadata["versions"][0],
                            "state": "READY"}]

    # gRPC: the same two refusals (restricted protocol without the key, not allowed with it;
    # gRPC checks the header under Triton's prefix for protocol restrictions).
    grpc_admin = {f"triton-grpc-protocol-{manifests.ADMIN_KEY_HEADER}": ADMIN_KEY}
    client = grpcclient.InferenceServerClient(triton.endpoints.grpc)
    try:
        for call in (lambda **kw: client.unload_model(MODEL, **kw), lambda **kw: client.load_model(MODEL, **kw),
                     lambda **kw: client.load_model("evil", config=evil_config,
                                                    files={"file:1/model.py": evil_py}, **kw)):
            for headers, answer in (({}, "restricted"), (grpc_admin, "not allowed")):
                with pytest.raises(InferenceServerException) as refused:
                    call(headers=headers)
                assert answer in refused.value.message(), refused.value
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


def test_admin_endpoints_need_the_key(start_triton, make_repo, tiny_encoder):
    """Log settings (a log *file* among them), tracing and shared-memory registration are
    refused without the admin header over HTTP and gRPC; with it they answer, so it is the
    header that refuses them and not a broken endpoint; clients need none of it."""
    import requests
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    mode, flags = split_args(operator_triton_args())
    triton = start_triton(make_repo(MODEL), [MODEL], model_control_mode=mode, extra_args=flags)
    url = triton.endpoints.http_url
    admin = {manifests.ADMIN_KEY_HEADER: ADMIN_KEY}
    restricted = [("GET", "/v2/logging", None), ("POST", "/v2/logging", {"log_file": "/tmp/owned.log"}),
                  ("POST", "/v2/logging", {"log_verbose_level": 9}),
                  ("GET", "/v2/trace/setting", None), ("GET", "/v2/systemsharedmemory/status", None),
                  ("POST", "/v2/systemsharedmemory/region/r/register",
                   {"key": "/r", "offset": 0, "byte_size": 64})]
    for method, path, body in restricted:
        resp = requests.request(method, f"{url}{path}", json=body, timeout=10)
        assert resp.status_code == 403, (method, path, resp.status_code, resp.text)
        assert "restricted" in resp.text.lower() or manifests.ADMIN_KEY_HEADER in resp.text, resp.text
    resp = requests.request("POST", f"{url}/v2/systemsharedmemory/region/r/register", timeout=10,
                            json={"key": "/r", "offset": 0, "byte_size": 64},
                            headers={manifests.ADMIN_KEY_HEADER: "a-guess"})
    assert resp.status_code == 403, resp.text
    assert requests.get(f"{url}/v2/logging", headers=admin, timeout=10).status_code == 200
    assert requests.get(f"{url}/v2/systemsharedmemory/status", headers=admin, timeout=10).status_code == 200

    # gRPC checks the header under Triton's prefix for protocol restrictions.
    grpc_admin = {f"triton-grpc-protocol-{manifests.ADMIN_KEY_HEADER}": ADMIN_KEY}
    client = grpcclient.InferenceServerClient(triton.endpoints.grpc)
    try:
        for call in (client.get_log_settings, client.get_trace_settings,
                     client.get_system_shared_memory_status,
                     lambda **kw: client.update_log_settings({"log_verbose_level": 9}, **kw)):
            with pytest.raises(InferenceServerException) as refused:
                call()
            assert "restricted" in refused.value.message(), refused.value
            call(headers=grpc_admin)  # the key opens it: the header is what refuses
        settings = client.get_log_settings(headers=grpc_admin, as_json=True)["settings"]
        assert settings["log_verbose_level"]["uint32_param"] == 9  # the one update made with the key
    finally:
        client.close()

    # What clients use needs no key: inference, model metadata and config, statistics, health.
    feeds = tiny_encoder.inputs(2, seed=7)
    np.testing.assert_allclose(infer(triton, MODEL, feeds, ["embedding"], "http")["embedding"],
                               tiny_encoder.reference(**feeds), atol=1e-5)
    for path in (f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/config", f"/v2/models/{MODEL}/stats",
                 "/v2/health/ready"):
        assert requests.get(f"{url}{path}", timeout=10).status_code == 200, path
