"""Per-token dynamic INT8 (compress.quantize_int8_per_token) on a small real ONNX graph.

The rewrite must compute exactly per-token symmetric INT8 arithmetic (checked against numpy),
and each sample's answer must not depend on the other samples in its batch: the property that
distinguishes it from ONNX Runtime's per-tensor dynamic INT8 (checked side by side).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimodel.builder import compress
from optimodel.builder.runners import ort_session
from optimodel.builder.steps import Skip

K, N = 64, 48


def two_matmuls(path, rng) -> tuple[np.ndarray, np.ndarray]:
    """x[B, T, K] @ W1 -> Relu -> @ W2: two constant-weight MatMuls, dynamic batch and length."""
    w1 = rng.normal(0, 0.2, (K, N)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (N, K)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="up"),
         helper.make_node("Relu", ["h"], ["a"], name="act"),
         helper.make_node("MatMul", ["a", "w2"], ["y"], name="down")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", K])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return w1, w2


def per_token_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Symmetric INT8 per token (row) and per output channel, in float64."""
    w_scale = np.abs(w).max(axis=0) / 127
    w_q = np.round(w / w_scale).clip(-127, 127)
    x_scale = np.maximum(np.abs(x).max(axis=-1, keepdims=True), 1e-12) / 127
    x_q = np.clip(np.round(x / x_scale), -128, 127)  # uint8 around 128: -128..127
    return (x_q.astype(np.float64) @ w_q.astype(np.float64)) * x_scale * w_scale


def run(path, x: np.ndarray) -> np.ndarray:
    return ort_session(path, 1).run(None, {"x": x})[0]


def test_per_token_graph_computes_per_token_int8(tmp_path):
    rng = np.random.default_rng(0)
    w1, w2 = two_matmuls(tmp_path / "fp32.onnx", rng)
    made, count = compress.quantize_int8_per_token(tmp_path / "fp32.onnx", tmp_path / "pt.onnx")
    assert count == 2
    ops = {n.op_type for n in onnx.load(str(made)).graph.node}
    assert "MatMul" not in ops and "MatMulIntegerToFloat" in ops
    x = rng.normal(0, 1, (3, 7, K)).astype(np.float32)
    expected = per_token_reference(np.maximum(per_token_reference(x, w1), 0).astype(np.float32), w2)
    got = run(made, x)
    assert got.shape == (3, 7, K)
    # (per-tensor dynamic INT8 of the same graph is 0.08 away from this reference at worst)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    exact = np.maximum(x @ w1, 0) @ w2
    rel = np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert rel < 0.02, rel


def test_a_token_outlier_in_one_sample_leaves_the_others_untouched(tmp_path):
    """Dynamic batching puts unrelated requests in one batch: with one scale per tensor, one
    request with a huge activation coarsens every other request's quantization; per token, the
    others' answers are bit-identical to running them alone."""
    rng = np.random.default_rng(1)
    two_matmuls(tmp_path / "fp32.onnx", rng)
    per_token, _ = compress.quantize_int8_per_token(tmp_path / "fp32.onnx", tmp_path / "pt.onnx")
    per_tensor = compress.quantize_int8_dynamic(tmp_path / "fp32.onnx", tmp_path / "dyn.onnx")
    normal = rng.normal(0, 1, (2, 5, K)).astype(np.float32)
    outlier = rng.normal(0, 1, (1, 5, K)).astype(np.float32)
    outlier[0, 0] *= 200  # one token of one request, [CLS]-like
    batch = np.concatenate([normal, outlier])
    np.testing.assert_array_equal(run(per_token, batch)[:2], run(per_token, normal))
    alone, batched = run(per_tensor, normal), run(per_tensor, batch)[:2]
    exact = run(tmp_path / "fp32.onnx", normal)
    err = lambda y: np.linalg.norm(y - exact) / np.linalg.norm(exact)  # noqa: E731
    assert err(batched) > 3 * err(alone), (err(batched), err(alone))


def test_per_token_skips_a_graph_without_constant_weight_matmuls(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"], name="act_x_act")], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(tmp_path / "m.onnx"))
    with pytest.raises(Skip, match="constant weight"):
        compress.quantize_int8_per_token(tmp_path / "m.onnx", tmp_path / "pt.onnx")
