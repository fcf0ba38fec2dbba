"""TensorRT path: engine build, runner, and a full build with target tensorrt.

Needs an NVIDIA GPU and the ``tensorrt`` package (the builder image's ``tensorrt`` extra);
skipped otherwise, with the reason saying which one is missing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def trt():
    module = pytest.importorskip("tensorrt", reason="the tensorrt package is not installed (extra: tensorrt)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: torch.cuda.is_available() is false")
    return module


def test_engine_build_and_runner_match_onnxruntime(trt, cnn, tmp_path):
    from optimodel.builder.runners import OrtRunner
    from optimodel.builder.tensorrt_engine import TrtRunner, build_engine
    from optimodel.builder.tensors import TensorInfo

    plan = build_engine(cnn.onnx, tmp_path / "model.plan", [TensorInfo("input", "FP32", (-1, 3, 32, 32))],
                        max_batch=8, opt_batch=4, seq_len=None, max_seq_len=None,
                        timing_cache=tmp_path / "timing.cache")
    assert plan.stat().st_size > 0 and (tmp_path / "timing.cache").stat().st_size > 0
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    got = TrtRunner(plan, "cuda")({"input": x})["logits"]
    want = OrtRunner(cnn.onnx, 1)({"input": x})["logits"]
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)


def test_tensorrt_build_writes_a_plan_repository(trt, cnn, build):
    spec = {"model": {"uri": str(cnn.onnx), "format": "onnx"},
            "optimization": {"target": "tensorrt", "maxBatchSize": 8, "calibration": {"synthetic": True},
                             "accuracy": {"metric": "top1-agreement", "threshold": 0.95}}}
    result = build(spec, "--quick", "--batch-sizes", "1,8")
    assert result.code == 0, result.summary
    report = result.report
    assert report["engine"]["platform"] == "tensorrt_plan"
    assert report["engine"]["computeCapability"] and report["engine"]["gpuProduct"]
    assert report["engine"]["runtimeVersion"].startswith("tensorrt ")
    assert (result.output / "repository/model/1/model.plan").is_file()
    assert not (result.output / "repository-python").exists()
    names = {c["name"]: c["status"] for c in report["candidates"]}
    assert names["tensorrt-fp32"] == "OK" and names["tensorrt-fp16"] == "OK"


def test_minilm_tensorrt_build(trt, minilm_path, build):
    spec = {"model": {"uri": str(minilm_path), "format": "huggingface"},
            "optimization": {"target": "tensorrt", "maxBatchSize": 16}}
    result = build(spec, "--quick", "--batch-sizes", "1,8")
    assert result.code == 0, result.summary
    assert result.report["accuracy"]["value"] >= 0.99
    assert json.loads(result.termination.read_text())["engine"]["platform"] == "tensorrt_plan"
