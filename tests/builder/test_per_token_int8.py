"""Per-token INT8 (compress.quantize_int8_per_token) on a small real ONNX graph.

A LayerNorm-fed and a ReLU-fed MatMul, like a transformer's FFN. The row scaling must be exact in
FP32, and after quantization one request with an outlier token must coarsen the other requests
in its batch far less than with ONNX Runtime's per-tensor dynamic INT8 (checked side by side).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimodel.builder import compress
from optimodel.builder.runners import ort_session
from optimodel.builder.steps import Skip

K, N = 64, 96


def ffn(path, rng, first: str = "LayerNormalization") -> None:
    """Outputs f = Relu(first(x) @ W1) @ W2 (two FFN MatMuls, scaled per token) and o = x @ W3
    (fed by the graph input: left per tensor). ``first``: LayerNormalization, or Relu (which lets
    an outlier token through to both FFN MatMuls, where a LayerNorm would tame it)."""
    w1 = rng.normal(0, 0.2, (K, N)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (N, K)).astype(np.float32)
    w3 = rng.normal(0, 0.2, (K, K)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], name="norm", axis=-1)
         if first == "LayerNormalization" else helper.make_node("Relu", ["x"], ["n"], name="first"),
         helper.make_node("MatMul", ["n", "w1"], ["h"], name="up"),
         helper.make_node("Relu", ["h"], ["a"], name="act"),
         helper.make_node("MatMul", ["a", "w2"], ["f"], name="down"),
         helper.make_node("MatMul", ["x", "w3"], ["o"], name="other")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", K])],
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, ["b", "t", K]),
         helper.make_tensor_value_info("o", TensorProto.FLOAT, ["b", "t", K])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(w3, "w3"),
         numpy_helper.from_array(rng.normal(1, 0.5, K).astype(np.float32), "gamma"),
         numpy_helper.from_array(rng.normal(0, 0.1, K).astype(np.float32), "beta")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, str(path))


def run(path, x: np.ndarray, output: str = "f") -> np.ndarray:
    return ort_session(path, 1).run([output], {"x": x})[0]


def test_row_scaling_is_exact_in_fp32_and_only_touches_the_ffn(tmp_path):
    rng = np.random.default_rng(0)
    ffn(tmp_path / "fp32.onnx", rng)
    model = onnx.load(str(tmp_path / "fp32.onnx"))
    compress._scale_rows(model, {"up", "down"})
    onnx.save(model, str(tmp_path / "scaled.onnx"))
    x = rng.normal(0, 1, (3, 7, K)).astype(np.float32)
    x[1, 2] *= 50
    for output in ("f", "o"):
        np.testing.assert_allclose(run(tmp_path / "scaled.onnx", x, output), run(tmp_path / "fp32.onnx", x, output),
                                   rtol=1e-5, atol=1e-5)

    made, count = compress.quantize_int8_per_token(tmp_path / "fp32.onnx", tmp_path / "pt.onnx")
    assert count == 2  # "up" (LayerNorm-fed) and "down" (ReLU-fed); "other" is not scaled
    nodes = onnx.load(str(made)).graph.node
    scaled = {n.name.split("/token_scale")[0] for n in nodes if "/token_scale" in n.name}
    assert scaled == {"up", "down"}
    assert [n.op_type for n in nodes].count("MatMulInteger") == 3  # all three in INT8
    assert "MatMul" not in {n.op_type for n in nodes}


def test_an_outlier_token_in_one_request_barely_touches_the_others(tmp_path):
    """Dynamic batching puts unrelated requests in one batch: with one scale per tensor, one
    request with a huge activation coarsens every other request's quantization (FFN output)."""
    rng = np.random.default_rng(1)
    ffn(tmp_path / "fp32.onnx", rng, first="Relu")
    per_token, _ = compress.quantize_int8_per_token(tmp_path / "fp32.onnx", tmp_path / "pt.onnx")
    per_tensor = compress.quantize_int8_dynamic(tmp_path / "fp32.onnx", tmp_path / "dyn.onnx")
    normal = rng.normal(0, 1, (2, 5, K)).astype(np.float32)
    outlier = rng.normal(0, 1, (1, 5, K)).astype(np.float32)
    outlier[0, 0, :4] = 400.0  # a few channels of one token of one request, [CLS]-like
    batch = np.concatenate([normal, outlier])
    exact = run(tmp_path / "fp32.onnx", normal)
    err = lambda y: float(np.linalg.norm(y - exact) / np.linalg.norm(exact))  # noqa: E731
    tensor_alone, tensor_batched = err(run(per_tensor, normal)), err(run(per_tensor, batch)[:2])
    token_alone, token_batched = err(run(per_token, normal)), err(run(per_token, batch)[:2])
    assert tensor_batched > 3 * tensor_alone, (tensor_alone, tensor_batched)
    assert token_batched < 1.5 * token_alone, (token_alone, token_batched)
    assert token_batched < tensor_batched / 3


def test_per_token_skips_a_graph_without_normalised_or_activated_matmuls(tmp_path):
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="plain")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9),
              str(tmp_path / "m.onnx"))
    with pytest.raises(Skip, match="per token"):
        compress.quantize_int8_per_token(tmp_path / "m.onnx", tmp_path / "pt.onnx")
