"""Builds of a small CNN built in code, from TorchScript and from ONNX, over several sources.

Covers: TorchScript (signature from model.inputs, baseline PyTorch eager), ONNX (baseline
ONNX Runtime FP32), static INT8 Q/DQ from a calibration .npz with its held-out tail, synthetic
calibration (reported as such), 2:4 pruning, sources http:// and pvc://, and the
AccuracyGateFailed path with nothing written.
"""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
from google.protobuf import text_format

pytestmark = pytest.mark.slow


def cnn_spec(uri, fmt="onnx", inputs=None, **optimization) -> dict:
    model = {"uri": str(uri), "format": fmt}
    if inputs:
        model["inputs"] = inputs
    return {"model": model, "optimization": {"maxBatchSize": 8, **optimization}}


def parse_config(path):
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(path.read_text(), mc.ModelConfig())


def test_torchscript_build(cnn, build):
    result = build(cnn_spec(cnn.torchscript, "torchscript", cnn.inputs), "--quick", "--batch-sizes", "1,4",
                   "--model-name", "cnn")
    assert result.code == 0, result.summary
    report = result.report
    assert report["baseline"]["runtime"] == "pytorch-eager-fp32"
    assert report["selected"] == "onnxruntime-fp32"
    cands = {c["name"]: c for c in report["candidates"]}
    # Dynamic INT8 has nothing to do on a CNN (no MatMul): SKIPPED, not a silent FP32 copy.
    assert cands["onnxruntime-int8-dynamic"]["status"] == "SKIPPED"
    assert report["accuracy"]["value"] > 0.9999
    cfg = parse_config(result.output / "repository/cnn/config.pbtxt")
    assert cfg.name == "cnn" and list(cfg.input[0].dims) == [3, 32, 32]
    assert [o.name for o in cfg.output] == ["output"] and list(cfg.output[0].dims) == [10]
    assert (result.output / "repository/cnn/warmup/input").stat().st_size == 3 * 32 * 32 * 4
    assert any("seeded random inputs" in w for w in report["warnings"])


def test_onnx_build_with_calibration_file_and_static_int8(cnn, cnn_calibration, build):
    # Calibrated on real samples, INT8 must keep every top-1 class of the 8 selection samples.
    spec = cnn_spec(cnn.onnx, precision="int8", calibration={"uri": str(cnn_calibration), "samples": 64},
                    accuracy={"metric": "top1-agreement", "threshold": 0.95})
    result = build(spec, "--quick", "--batch-sizes", "4")
    assert result.code == 0, result.summary
    report = result.report
    assert report["baseline"]["runtime"].startswith("onnxruntime")
    assert report["calibrationSource"] == "uri"
    cands = {c["name"]: c for c in report["candidates"]}
    assert set(cands) == {"onnxruntime-int8-dynamic", "onnxruntime-int8-per-token",
                          "onnxruntime-int8-smoothquant", "onnxruntime-int8-qdq"}
    assert report["selected"] == "onnxruntime-int8-qdq"
    # 40 samples of the user's data, three disjoint sets: 24 calibrate, 8 gate and choose among the
    # candidates, and the last 8 measure the selected engine once (the published accuracy).
    picked = cands["onnxruntime-int8-qdq"]["accuracy"]
    assert (picked["samples"], picked["sampleSet"], picked["source"]) == (8, "selection", "uri")
    assert report["accuracy"]["sampleSet"] == "report" and report["accuracy"]["samples"] == 8
    assert report["accuracy"]["source"] == "uri"
    print("int8-qdq top-1 agreement: selection", cands["onnxruntime-int8-qdq"]["accuracy"]["value"],
          "report", report["accuracy"]["value"])
    import onnx

    graph = onnx.load(str(result.output / "repository/model/1/model.onnx"))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_accuracy_gate_failure_writes_nothing(cnn, build, tmp_path):
    # INT8 can never reproduce FP32 bit for bit: max-abs 0 is unreachable, deterministically.
    spec = cnn_spec(cnn.onnx, precision="int8", calibration={"synthetic": True},
                    accuracy={"metric": "max-abs", "threshold": 0.0})
    result = build(spec, "--quick", "--batch-sizes", "1")
    assert result.code == 16
    assert result.summary["succeeded"] is False and result.summary["reason"] == "AccuracyGateFailed"
    assert "onnxruntime-int8-qdq" in result.summary["message"]
    assert not result.output.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_synthetic_calibration_is_reported(cnn, build):
    spec = cnn_spec(cnn.onnx, calibration={"synthetic": True},
                    accuracy={"metric": "top1-agreement", "threshold": 0.95})
    result = build(spec, "--quick", "--batch-sizes", "2")
    assert result.code == 0, result.summary
    report = result.report
    assert report["calibrationSource"] == "synthetic"
    assert any("calibration.synthetic" in w for w in report["warnings"])


def test_two_four_pruning_on_torchscript(cnn, build, tmp_path):
    # Half the weights of an untrained CNN zeroed without fine-tuning moves its logits by about
    # 0.05 (measured): a gate of 0.5 passes that and refuses a pruning that wrecked the model.
    spec = cnn_spec(cnn.torchscript, "torchscript", cnn.inputs, precision="fp32", sparsity={"pattern": "2:4"},
                    accuracy={"metric": "max-abs", "threshold": 0.5})
    result = build(spec, "--quick", "--batch-sizes", "1", "--work-dir", str(tmp_path / "work"))
    assert result.code == 0, result.summary
    # The gate compares against the *dense* source: a zero difference would mean the reference
    # was taken after pruning (or nothing was pruned), and the gate would prove nothing.
    assert result.report["accuracy"]["value"] > 1e-4
    steps = {s["step"]: s for s in result.report["steps"]}
    assert steps["prune"]["status"] == "OK" and "2:4" in steps["prune"]["detail"]
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(result.output / "repository/model/1/model.onnx"))
    conv_weights = [numpy_helper.to_array(i) for i in graph.graph.initializer
                    if len(i.dims) == 4 and i.dims[1] % 4 == 0]
    assert len(conv_weights) == 2  # the 3-channel stem stays dense (3 is not a multiple of 4)
    for w in conv_weights:
        groups = np.moveaxis(w, 1, -1).reshape(-1, 4)  # 2:4 along input channels
        assert ((groups != 0).sum(axis=1) <= 2).all()


def test_sparsity_on_onnx_input_is_skipped_with_a_warning(cnn, build):
    spec = cnn_spec(cnn.onnx, precision="fp32", sparsity={"pattern": "unstructured", "ratio": 0.5})
    result = build(spec, "--quick", "--batch-sizes", "1")
    assert result.code == 0, result.summary
    steps = {s["step"]: s for s in result.report["steps"]}
    assert steps["prune"]["status"] == "SKIPPED"
    assert any("cannot be pruned" in w for w in result.report["warnings"])


@pytest.fixture
def http_server(cnn):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(cnn.onnx.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_over_http_and_write_to_pvc(cnn, build, http_server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMODEL_PVC_ROOT", str(tmp_path / "pvc"))
    spec = cnn_spec(f"{http_server}/{cnn.onnx.name}", precision="fp32")
    result = build(spec, "--quick", "--batch-sizes", "1", output="pvc://artifacts/ns/cnn/key")
    assert result.code == 0, result.summary
    out = tmp_path / "pvc" / "artifacts/ns/cnn/key"
    assert (out / "report.json").is_file() and (out / "repository/model/1/model.onnx").is_file()
    assert result.summary["benchmark"]["reportUri"] == "pvc://artifacts/ns/cnn/key/report.json"
    assert result.summary["engine"]["uri"] == "pvc://artifacts/ns/cnn/key"


def test_failed_build_leaves_an_existing_output_untouched(cnn, build, tmp_path):
    first = build(cnn_spec(cnn.onnx, precision="fp32"), "--quick", "--batch-sizes", "1")
    assert first.code == 0
    before = {p.relative_to(first.output): p.read_bytes() for p in first.output.rglob("*") if p.is_file()}
    bad = cnn_spec(cnn.onnx, precision="int8", calibration={"synthetic": True},
                   accuracy={"metric": "max-abs", "threshold": 0.0})
    second = build(bad, "--quick", "--batch-sizes", "1", output=first.output, name="again")
    assert second.code == 16
    after = {p.relative_to(first.output): p.read_bytes() for p in first.output.rglob("*") if p.is_file()}
    assert after == before


def test_explicit_fp16_is_built_even_on_cpu(cnn, build):
    result = build(cnn_spec(cnn.onnx, precision="fp16"), "--quick", "--batch-sizes", "1")
    assert result.code == 0, result.summary
    assert result.report["selected"] == "onnxruntime-fp16" and result.summary["engine"]["precision"] == "fp16"
    import onnx

    graph = onnx.load(str(result.output / "repository/model/1/model.onnx"))
    assert onnx.TensorProto.FLOAT16 in {i.data_type for i in graph.graph.initializer}
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # FP32 I/O kept


def test_bf16_on_onnxruntime_cpu_is_compile_failed(cnn, build):
    # ONNX Runtime's CPU provider has no BF16 convolution: the candidate fails to load, and
    # with no other candidate in scope the build fails with CompileFailed and the cause.
    result = build(cnn_spec(cnn.onnx, precision="bf16"), "--quick", "--batch-sizes", "1")
    assert result.code == 15
    assert result.summary["reason"] == "CompileFailed"
    assert "onnxruntime-bf16" in result.summary["message"] and "bfloat16" in result.summary["message"]
    assert not result.output.exists()
