"""Candidate graphs per precision, all made on the ONNX graph.

TensorRT 10+ builds strongly typed networks (TensorRT 11 has no precision flags at all), so a
precision is a property of the graph: FP16/BF16 come from a converted graph, INT8/FP8 from
explicit Q/DQ nodes placed with calibration data. ONNX Runtime runs the same kinds of graphs,
plus two CPU-specific ones: the transformer-fused FP32 graph (onnxruntime.transformers'
BERT fusions: Attention, SkipLayerNormalization, BiasGelu, ...) and dynamic INT8 (weights
quantized per channel offline, activations per call), which needs no calibration data.

Measured on the 2-core dev machine (DESIGN section 8): quantizing every op with static Q/DQ
destroyed MiniLM (cosine -0.16), while dynamic INT8 of the fused MatMuls kept cosine 0.99+ at
about twice the FP32 speed. Only the accuracy gate decides; these graphs are proposals.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

import numpy as np

from optimodel.builder.errors import BuildError, wrap
from optimodel.builder.steps import Skip

log = logging.getLogger("optimodel.builder")

Feeds = dict[str, np.ndarray]

# Ops quantized by the INT8 candidates: the matrix products hold nearly all the FLOPs; norms,
# softmax, GELU and residual adds stay in float (quantizing them costs accuracy, buys little).
DYNAMIC_INT8_OPS = ["MatMul", "Attention"]
STATIC_INT8_OPS = ["Conv", "MatMul", "Gemm"]
NORM_OPS = {"LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization",
            "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization"}
ACTIVATION_OPS = {"Gelu", "BiasGelu", "FastGelu", "QuickGelu", "Relu", "Erf", "Tanh", "Sigmoid"}
ELEMENTWISE_OPS = {"Mul", "Add", "Div", "Sub", "Cast"}  # what an exported GELU is made of


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs every tensor (and a pre-processing hint) on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def fuse_transformer(src: Path, dst: Path, info: dict, use_gpu: bool) -> tuple[Path, dict[str, int]]:
    """onnxruntime.transformers BERT fusions; returns the fused graph and its fused-op counts."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    try:
        fused = optimize_model(str(src), model_type="bert", num_heads=info["num_heads"],
                               hidden_size=info["hidden_size"], optimization_options=options,
                               opt_level=0, use_gpu=use_gpu)
        stats = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
        fused.save_model_to_file(str(dst))
    except Exception as exc:
        log.warning("transformer fusion failed, using the unfused graph: %s", exc)
        return src, {}
    return dst, stats


def to_fp16(src: Path, dst: Path) -> Path:
    """FP16 weights and activations; graph inputs/outputs stay FP32 (Casts at the edges)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    try:
        converted = OnnxModel(convert_float_to_float16(model, keep_io_types=True))
        # The converter appends its edge Casts at the end; TensorRT's parser wants graph order.
        converted.topological_sort()
    except Exception as exc:
        raise wrap("ExportFailed", f"FP16 conversion failed: {exc}", exc) from exc
    onnx.save(converted.model, str(dst))
    return dst


def to_bf16(src: Path, dst: Path) -> Path:
    """BF16 graph: the FP16 conversion (same op block list, FP32 I/O), retyped to BFLOAT16."""
    import onnx
    from onnx import TensorProto, numpy_helper

    tmp = dst.with_suffix(".fp16.onnx")
    to_fp16(src, tmp)
    model = onnx.load(str(tmp))
    tmp.unlink()

    def retype_tensor(t: "onnx.TensorProto") -> "onnx.TensorProto":
        if t.data_type != TensorProto.FLOAT16:
            return t
        bits = fp32_to_bf16_bits(numpy_helper.to_array(t).astype(np.float32))
        new = onnx.helper.make_tensor(t.name, TensorProto.BFLOAT16, list(t.dims), bits.tobytes(), raw=True)
        return new

    graph = model.graph
    inits = [retype_tensor(t) for t in graph.initializer]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.BFLOAT16
            elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(retype_tensor(attr.t))
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
            value.type.tensor_type.elem_type = TensorProto.BFLOAT16
    onnx.save(model, str(dst))
    return dst


def fp32_to_bf16_bits(arr: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even FP32 -> BF16, as uint16 bit patterns (NaN kept NaN)."""
    u = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(arr)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


def quantize_int8_dynamic(src: Path, dst: Path, exclude: list[str] | None = None) -> Path:
    """Dynamic INT8 (ONNX Runtime CPU): per-channel symmetric weights, activations per call.

    Only MatMuls with constant weights (and fused Attention, whose QKV projection becomes
    QAttention) are quantized; ONNX Runtime fuses the result into DynamicQuantizeMatMul.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _quiet_root_logger():
            quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=DYNAMIC_INT8_OPS, nodes_to_exclude=exclude or [],
                             extra_options={"MatMulConstBOnly": True,
                                            # contrib ops (fused graphs) defeat shape inference
                                            "DefaultTensorType": onnx.TensorProto.FLOAT})
    except Exception as exc:
        raise wrap("ExportFailed", f"dynamic INT8 quantization failed: {exc}", exc) from exc
    return dst


def quantize_int8_per_token(src: Path, dst: Path) -> tuple[Path, int]:
    """Dynamic INT8 with each token's activations scaled to unit range first (ONNX Runtime CPU),
    no calibration data.

    Plain dynamic INT8 scales a whole activation tensor by its largest value, and a transformer
    has a few tokens ([CLS], [SEP], punctuation) whose activations are many times larger than the
    rest: every other token is left with a few bits. Dividing each token (row) by its own max |x|
    before the MatMul, and multiplying the row of the result back, is exact in FP32; the per-tensor
    INT8 scale of the scaled rows is then close to a per-token scale. Measured on MiniLM (bench/
    build_minilm.py's study), worst cosine 0.988 -> 0.996 at about 0.9x plain dynamic INT8's
    speed, with the quantization kept in ONNX Runtime's fused DynamicQuantizeMatMul (a per-row
    QuantizeLinear + MatMulIntegerToFloat rewrite was slower).

    Only the MatMuls whose inputs carry the outlier tokens are scaled: those fed by a LayerNorm
    (attention-free FFN up-projections) or by an activation function (FFN down-projections); the
    rest (e.g. attention output projections, fused Attention) are quantized per tensor as usual.
    Returns the graph and the number of token-scaled MatMuls.
    """
    import onnx

    model = onnx.load(str(src))
    targets = set(norm_fed_matmuls(model)) | set(_activation_fed(model))  # (the graph is loaded once)
    targets &= {n.name for n in _weight_matmuls(model) if n.op_type == "MatMul"}
    if not targets:
        raise Skip("no LayerNorm- or activation-fed MatMul with constant weights to scale per token")
    _scale_rows(model, targets)
    scaled = dst.with_suffix(".token-scaled.onnx")
    onnx.save(model, str(scaled))
    try:
        return quantize_int8_dynamic(scaled, dst), len(targets)
    finally:
        scaled.unlink(missing_ok=True)


def norm_fed_matmuls(model) -> list[str]:
    """Constant-weight MatMuls whose input is a LayerNorm's output (FFN up-projections)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return [n.name for n in _weight_matmuls(model)
            if n.input[0] in producer and producer[n.input[0]].op_type in NORM_OPS]


def _scale_rows(model, targets: set[str]) -> None:
    """``y = x @ W`` -> ``s = max(max|x_row|, eps)``, ``y = ((x / s) @ W) * s``, per row (the last
    axis), for each named MatMul, in place. Exact in FP32; only the INT8 scales that follow change."""
    from onnx import helper, numpy_helper

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    model.graph.initializer.extend([numpy_helper.from_array(np.array([-1], np.int64), "token_scale/axes"),
                                    numpy_helper.from_array(np.array(1e-12, np.float32), "token_scale/eps")])
    nodes = []
    for node in model.graph.node:
        if node.name not in targets:
            nodes.append(node)
            continue
        p, x, y = f"{node.name}/token_scale", node.input[0], node.output[0]
        absolute = helper.make_node("Abs", [x], [f"{p}/abs"], name=f"{p}/abs")
        if opset >= 18:
            row_max = helper.make_node("ReduceMax", [f"{p}/abs", "token_scale/axes"], [f"{p}/row_max"],
                                       name=f"{p}/row_max", keepdims=1)
        else:
            row_max = helper.make_node("ReduceMax", [f"{p}/abs"], [f"{p}/row_max"], name=f"{p}/row_max",
                                       axes=[-1], keepdims=1)
        scale = helper.make_node("Max", [f"{p}/row_max", "token_scale/eps"], [f"{p}/scale"], name=f"{p}/scale")
        divide = helper.make_node("Div", [x, f"{p}/scale"], [f"{p}/scaled"], name=f"{p}/scaled")
        node.input[0], node.output[0] = f"{p}/scaled", f"{p}/product"
        restore = helper.make_node("Mul", [f"{p}/product", f"{p}/scale"], [y], name=f"{p}/restore")
        nodes += [absolute, row_max, scale, divide, node, restore]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _weight_matmuls(model) -> list:
    """Nodes whose second input is a constant weight: MatMul/Gemm/Attention."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm", "Attention") and len(n.input) > 1 and n.input[1] in inits]


def dynamic_int8_targets(path: Path) -> list[str]:
    """Nodes dynamic INT8 would quantize (MatMul / Attention with constant weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in _weight_matmuls(model) if n.op_type in DYNAMIC_INT8_OPS]


def activation_fed_matmuls(path: Path) -> list[str]:
    """MatMuls fed by an activation function: the FFN down-projections of a transformer.

    Their inputs (GELU outputs) are heavy-tailed, so a per-tensor INT8 scale loses the small
    values that carry most of the signal; keeping them in FP32 is the classic mixed-precision
    fix (Bondarenko et al., 2021). Data-free, so usable without calibration.
    """
    import onnx

    return _activation_fed(onnx.load(str(path), load_external_data=False))


def _activation_fed(model) -> list[str]:
    """``activation_fed_matmuls`` on a loaded graph."""
    producer = {o: n for n in model.graph.node for o in n.output}

    def fed_by_activation(tensor: str, depth: int = 4) -> bool:
        # A fused graph feeds the MatMul from Gelu/BiasGelu directly; an exported one computes
        # GELU as x * 0.5 * (1 + erf(x / sqrt 2)), so look back through a few elementwise ops.
        node = producer.get(tensor)
        if node is None:
            return False
        if node.op_type in ACTIVATION_OPS:
            return True
        return depth > 0 and node.op_type in ELEMENTWISE_OPS and any(
            fed_by_activation(i, depth - 1) for i in node.input)

    return [n.name for n in _weight_matmuls(model) if fed_by_activation(n.input[0])]


def activation_matmuls(path: Path) -> list[str]:
    """MatMuls of two activations (attention's Q.K^T and scores.V): no constant weight to
    quantize per channel, and activations on both sides whose ranges vary per sample."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul"
            and not any(i in inits or i in constants for i in n.input)]


def smooth_norm_inputs(src: Path, dst: Path, calibration: Feeds, threads: int, alpha: float = 0.5) -> tuple[Path, int]:
    """SmoothQuant (Xiao et al., 2023) for the matrix products fed by a LayerNorm.

    LayerNorm outputs carry a few outlier channels that dominate a per-tensor INT8 scale. With
    per-channel activation maxima from the calibration data, s_j = max|X_j|^a / max|W_j|^(1-a);
    the activation is divided by s (one Mul in front of the MatMul, leaving the residual branch
    untouched) and the weight rows multiplied by s. Exact in FP32; afterwards both factors
    quantize with less error. Returns the graph and the number of smoothed nodes.
    """
    import onnx
    from onnx import helper, numpy_helper

    from optimodel.builder.runners import ort_session

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    norm_fed = set(norm_fed_matmuls(model))
    targets = [n for n in _weight_matmuls(model) if n.name and n.name in norm_fed]
    if not targets:
        raise Skip("no LayerNorm-fed matrix products to smooth")
    # Per-channel |max| of each target input over the calibration samples.
    probe = onnx.load(str(src))
    names = sorted({n.input[0] for n in targets})
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    probe_path = dst.with_suffix(".probe.onnx")
    onnx.save(probe, str(probe_path))
    try:
        session = ort_session(probe_path, threads)
        amax: dict[str, np.ndarray] = {}
        n = len(next(iter(calibration.values())))
        input_names = {i.name for i in session.get_inputs()}
        for start in range(0, n, 8):
            feeds = {k: v[start:start + 8] for k, v in calibration.items() if k in input_names}
            for name, out in zip(names, session.run(names, feeds)):
                m = np.abs(out).reshape(-1, out.shape[-1]).max(axis=0)
                amax[name] = np.maximum(amax[name], m) if name in amax else m
    finally:
        probe_path.unlink(missing_ok=True)

    target_names = {n.name for n in targets}
    nodes, new_inits, smoothed_count = [], [], 0
    for node in model.graph.node:
        if node.name in target_names and consumers.get(node.input[1], 0) == 1 and not (
            node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        ):  # (a shared weight, or a transposed Gemm weight, is left alone)
            weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            a = np.maximum(amax[node.input[0]], 1e-5)
            w = np.maximum(np.abs(weight).max(axis=1), 1e-5)
            s = a ** alpha / w ** (1 - alpha)
            s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight * s[:, None], node.input[1]))
            inv = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{node.name}_smooth_inv")
            new_inits.append(inv)
            smoothed = f"{node.input[0]}_smoothed_{node.name}"
            # The Mul goes right before its consumer: the node list stays topologically sorted.
            nodes.append(helper.make_node("Mul", [node.input[0], inv.name], [smoothed],
                                          name=f"{node.name}_smooth"))
            node.input[0] = smoothed
            smoothed_count += 1
        nodes.append(node)
    copied = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]
    del model.graph.node[:]
    model.graph.node.extend(copied)
    model.graph.initializer.extend(new_inits)
    onnx.save(model, str(dst))
    return dst, smoothed_count


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over in-memory samples, a few at a time."""

    def __init__(self, feeds: Feeds, batch: int = 8) -> None:
        self.feeds = feeds
        self.batch = batch
        self.n = len(next(iter(feeds.values())))
        self._it = self._iter()

    def _iter(self) -> Iterator[Feeds]:
        for start in range(0, self.n, self.batch):
            yield {k: v[start:start + self.batch] for k, v in self.feeds.items()}

    def get_next(self) -> Feeds | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._iter()


def quantize_int8_static(src: Path, dst: Path, calibration: Feeds, *, for_tensorrt: bool,
                         exclude: list[str] | None = None) -> Path:
    """Static INT8 as explicit Q/DQ pairs (the form TensorRT's strongly typed networks consume).

    Symmetric activations and weights (TensorRT supports zero-point 0 only), per-channel weights,
    only Conv/MatMul/Gemm inputs quantized; scales from min/max over the calibration samples.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepped = dst.with_suffix(".prep.onnx")
    try:
        with _quiet_root_logger():
            try:
                # When its symbolic shape inference gives up, onnxruntime dumps the model (with
                # external data: ~90 MB for MiniLM) into the working directory: keep that ours.
                with contextlib.chdir(dst.parent):
                    quant_pre_process(str(src.resolve()), str(prepped.resolve()), skip_optimization=for_tensorrt)
                model_in = prepped
            except Exception as exc:  # shape inference helps Q/DQ placement but is optional
                log.info("quantization pre-processing skipped: %s", exc)
                model_in = src
            quantize_static(
                str(model_in), str(dst), _Reader(calibration), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=STATIC_INT8_OPS, per_channel=True,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude or [],
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                               "QuantizeBias": not for_tensorrt, "AddQDQPairToWeight": for_tensorrt},
            )
    except BuildError:
        raise
    except Exception as exc:
        raise wrap("CalibrationFailed", f"static INT8 calibration failed: {type(exc).__name__}: {exc}", exc) from exc
    finally:
        prepped.unlink(missing_ok=True)
    return dst


def quantize_fp8(src: Path, dst: Path, calibration: Feeds) -> Path:
    """FP8 (E4M3) Q/DQ through NVIDIA ModelOpt's ONNX quantizer, when it is installed."""
    try:
        from modelopt.onnx.quantization import quantize as modelopt_quantize
    except Exception as exc:
        raise Skip(f"FP8 Q/DQ needs nvidia-modelopt (modelopt.onnx.quantization), not importable here: "
                   f"{type(exc).__name__}") from exc
    try:
        modelopt_quantize(onnx_path=str(src), quantize_mode="fp8", calibration_data=calibration,
                          output_path=str(dst))
    except Exception as exc:
        raise wrap("CalibrationFailed", f"FP8 quantization (modelopt) failed: {exc}", exc) from exc
    return dst
