"""The Python-backend model (repository-python/<name>/1/model.py), without a Triton server.

The real-server test lives with the serving tier. Here a minimal stand-in for
``triton_python_backend_utils`` (the handful of names model.py uses) checks the batching logic
only: requests are grouped by non-batch shape, run as one ONNX Runtime call per group, split
back per request, and only the requested outputs are returned.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format


class FakeTensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class FakeResponse:
    def __init__(self, output_tensors=None, error=None):
        self.outputs = {t.name(): t.as_numpy() for t in (output_tensors or [])}
        self.error = error


class FakeError:
    def __init__(self, message):
        self.message = message


class FakeRequest:
    def __init__(self, inputs: dict, requested=()):
        self.inputs, self.requested = inputs, list(requested)

    def requested_output_names(self):
        return self.requested


@pytest.fixture
def fake_pb_utils(monkeypatch):
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor
    module.InferenceResponse = FakeResponse
    module.TritonError = FakeError
    module.get_input_tensor_by_name = lambda req, name: (
        FakeTensor(name, req.inputs[name]) if name in req.inputs else None)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return module


@pytest.fixture
def seq_model(tmp_path) -> Path:
    """ids [batch, seq] INT64 -> total [batch] (sum over seq) and scaled [batch, seq] FP32."""
    import onnx
    from onnx import TensorProto, helper

    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])
    total = helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"])
    scaled = helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", "seq"])
    nodes = [
        helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["f", "axes"], ["total"], keepdims=0),
        helper.make_node("Mul", ["f", "two"], ["scaled"]),
    ]
    inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
             helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])]
    model = helper.make_model(helper.make_graph(nodes, "seq", [ids], [total, scaled], inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    path = tmp_path / "seq.onnx"
    onnx.save(model, str(path))
    return path


def _load_repository_model(tmp_path, onnx_path, fake_pb_utils):
    from optimodel.builder.tensors import TensorInfo, warmup_samples
    from optimodel.triton.config import ModelSpec, model_config
    from optimodel.triton.repository import write_onnxruntime

    ids = TensorInfo("ids", "INT64", (-1, -1))
    spec = ModelSpec(name="seq", inputs=[ids.triton()],
                     outputs=[TensorInfo("total", "FP32", (-1,)).triton(), TensorInfo("scaled", "FP32", (-1, -1)).triton()],
                     max_batch_size=8, gpu=False, preferred_batch_sizes=[4],
                     warmup=warmup_samples([ids], {"ids": np.ones((1, 5), np.int64)}))
    write_onnxruntime(tmp_path / "out", spec, onnx_path)
    model_dir = tmp_path / "out" / "repository-python" / "seq"
    loader = importlib.util.spec_from_file_location("triton_model_under_test", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    config = json_format.MessageToDict(model_config(spec, backend="python"), preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(model_dir),
                      "model_version": "1"})
    return model, model_dir


def test_model_py_imports_only_what_the_backend_has(tmp_path, seq_model, fake_pb_utils):
    _, model_dir = _load_repository_model(tmp_path, seq_model, fake_pb_utils)
    tree = ast.parse((model_dir / "1" / "model.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"numpy", "onnxruntime", "json", "triton_python_backend_utils"}
    assert (model_dir / "1" / "model.onnx").is_file() and (model_dir / "warmup" / "ids").is_file()


def test_execute_batches_requests_by_shape_and_splits_results(tmp_path, seq_model, fake_pb_utils):
    model, _ = _load_repository_model(tmp_path, seq_model, fake_pb_utils)
    calls = []
    run = model.session.run
    model.session.run = lambda names, feeds: calls.append(feeds["ids"].shape) or run(names, feeds)
    requests = [
        FakeRequest({"ids": np.array([[1, 2, 3]])}),
        FakeRequest({"ids": np.array([[1, 1, 1, 1], [2, 2, 2, 2]])}, requested=["total"]),
        FakeRequest({"ids": np.array([[4, 5, 6], [7, 8, 9]], dtype=np.int32)}),  # cast to INT64
        FakeRequest({}),  # missing input: an error for this request only
    ]
    responses = model.execute(requests)
    assert sorted(calls) == [(2, 4), (3, 3)]  # one ONNX Runtime call per shape group
    assert responses[0].outputs["total"].tolist() == [6.0]
    assert responses[0].outputs["scaled"].tolist() == [[2.0, 4.0, 6.0]]
    assert set(responses[1].outputs) == {"total"} and responses[1].outputs["total"].tolist() == [4.0, 8.0]
    assert responses[2].outputs["total"].tolist() == [15.0, 24.0]
    assert responses[3].error is not None and "missing input ids" in responses[3].error.message
    model.finalize()
