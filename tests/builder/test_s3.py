"""s3:// end to end against a real S3-compatible server (MinIO): model source, build output
(uploaded only after success), cache hit, and repository staging, with credentials only from the
standard AWS environment variables (what a pod gets from its credentials Secret)."""

from __future__ import annotations

import json

import pytest

from optimodel.api.report import EXIT_CODES
from optimodel.api.spec import Serving
from optimodel.triton.config import parse_config
from optimodel.triton.stage import stage_repository

pytestmark = pytest.mark.slow


@pytest.fixture
def s3(object_store, monkeypatch):
    for name, value in object_store.env.items():
        monkeypatch.setenv(name, value)
    fs = object_store.fs()
    for bucket in ("models", "artifacts"):
        if not fs.exists(bucket):
            fs.mkdir(bucket)
    return fs


def test_build_from_and_to_s3_then_stage_from_s3(build, cnn, s3, tmp_path, caplog):
    s3.put(str(cnn.onnx), "models/cnn/cnn.onnx")
    spec = {"model": {"uri": "s3://models/cnn/cnn.onnx", "format": "onnx"},
            "optimization": {"precision": "fp32", "target": "onnxruntime", "maxBatchSize": 4,
                             "accuracy": {"metric": "top1-agreement", "threshold": 0.99}}}
    out = "s3://artifacts/builds/ml/cnn/k1"
    first = build(spec, "--quick", "--batch-sizes", "1,4", "--model-name", "cnn", output=out, name="first")
    assert first.code == 0, first.summary
    assert first.summary["succeeded"] and first.summary["engine"]["platform"] == "onnxruntime_onnx"
    report = json.loads(s3.cat("artifacts/builds/ml/cnn/k1/report.json"))
    assert report["succeeded"] and report["buildKey"] == first.summary["buildKey"]
    assert s3.exists("artifacts/builds/ml/cnn/k1/repository/cnn/1/model.onnx")
    assert s3.exists("artifacts/builds/ml/cnn/k1/repository-python/cnn/1/model.py")

    caplog.clear()
    again = build(spec, "--quick", "--model-name", "cnn", output=out, name="again")
    assert again.code == 0 and "cache hit" in caplog.text

    serving = Serving.model_validate({"dynamicBatching": {"maxQueueDelayMicroseconds": 300}})
    stage_repository(f"{out}/repository", tmp_path / "models", "cnn", serving, layout="native")
    config = parse_config((tmp_path / "models" / "cnn" / "config.pbtxt").read_text())
    assert config.dynamic_batching.max_queue_delay_microseconds == 300
    assert (tmp_path / "models" / "cnn" / "1" / "model.onnx").stat().st_size > 0


def test_failed_build_writes_nothing_to_s3(build, cnn, s3):
    s3.put(str(cnn.onnx), "models/cnn/cnn.onnx")
    spec = {"model": {"uri": "s3://models/cnn/cnn.onnx", "format": "onnx"},
            # INT8 can never reproduce FP32 to within 1e-9: the gate must fail.
            "optimization": {"precision": "int8", "target": "onnxruntime", "maxBatchSize": 4,
                             "calibration": {"synthetic": True, "samples": 16},
                             "accuracy": {"metric": "max-abs", "threshold": 1e-9}}}
    result = build(spec, "--quick", "--batch-sizes", "1", output="s3://artifacts/builds/ml/cnn/failed")
    assert result.code == 16 and result.summary["reason"] == "AccuracyGateFailed", result.summary
    assert not s3.exists("artifacts/builds/ml/cnn/failed")


def test_missing_s3_object_is_model_not_found(build, s3):
    result = build({"model": {"uri": "s3://models/nothing/here.onnx", "format": "onnx"}},
                   output="s3://artifacts/builds/ml/none/k")
    assert result.code == 10 and result.summary["reason"] == "ModelNotFound"
    assert "s3://models/nothing/here.onnx" in result.summary["message"]
    result = build({"model": {"uri": "s3://no-such-bucket/here.onnx", "format": "onnx"}},
                   output="s3://artifacts/builds/ml/none/k", name="nobucket")
    assert result.code == 10 and result.summary["reason"] == "ModelNotFound", result.summary


def test_wrong_credentials_are_access_denied(build, cnn, s3, object_store, monkeypatch):
    """A wrong secret key is the credentials' fault, not a missing model: AccessDenied (19),
    naming the URI and the Secret, never a secret value."""
    s3.put(str(cnn.onnx), "models/cnn/cnn.onnx")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    spec = {"model": {"uri": "s3://models/cnn/cnn.onnx", "format": "onnx", "credentialsSecret": "model-creds"}}
    result = build(spec, output="s3://artifacts/builds/ml/cnn/denied")
    assert result.code == EXIT_CODES["AccessDenied"] == 19, result.summary
    assert not result.summary["succeeded"] and result.summary["reason"] == "AccessDenied"
    message = result.summary["message"]
    assert "s3://models/cnn/cnn.onnx" in message and "model-creds" in message
    assert "wrong-secret" not in message and object_store.env["AWS_SECRET_ACCESS_KEY"] not in message
    assert not s3.exists("artifacts/builds/ml/cnn/denied")


def test_refused_output_credentials_are_access_denied(build, cnn, s3, object_store, monkeypatch):
    """The model reads fine (local); the artifact store refuses the upload: AccessDenied, not
    OutputWriteFailed, and nothing lands there."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    spec = {"model": {"uri": str(cnn.onnx), "format": "onnx"},
            "optimization": {"precision": "fp32", "target": "onnxruntime", "maxBatchSize": 4}}
    out = "s3://artifacts/builds/ml/cnn/refused"
    result = build(spec, "--quick", "--batch-sizes", "1", output=out)
    assert result.code == EXIT_CODES["AccessDenied"], result.summary
    assert result.summary["reason"] == "AccessDenied"
    message = result.summary["message"]
    assert out in message and "write" in message and "artifact credentials" in message
    assert "wrong-secret" not in message and object_store.env["AWS_SECRET_ACCESS_KEY"] not in message
    assert not s3.exists("artifacts/builds/ml/cnn/refused")
