"""The candidate recipes: one row per way of compressing the exported graph for a runtime.

Each ``Recipe`` says which target and precision it serves, when it does not apply (a pure
function of the build's ``Conditions``, so the table can be tested without a model), and how
it makes its graph. The pipeline walks ``plan(target, precision)`` in order; the order is also
the tie-break among equally fast and equally accurate candidates (simpler recipes first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optimodel.builder import compress
from optimodel.builder.steps import Skip

Feeds = dict  # input name -> stacked calibration samples (numpy): samples.EvaluationSets.calibration


@dataclass(frozen=True)
class Conditions:
    """What decides whether a recipe applies: the spec's choice and the build machine."""

    target: str  # "tensorrt" | "onnxruntime"
    auto: bool  # precision auto: only recipes that can pay off are tried
    on_cpu: bool
    has_calibration: bool
    compute_capability: float | None = None  # the builder's GPU, if any


@dataclass(frozen=True)
class Inputs:
    """What a recipe builds from."""

    graph: Path  # the exported FP32 graph, as is (TensorRT fuses by itself)
    base: Path  # the graph candidates start from: transformer-fused for ONNX Runtime, else graph
    calibration: Feeds | None
    threads: int
    base_note: str | None = None  # what making ``base`` did (the FP32 candidate reports it)


Made = tuple[Path, str | None]  # the candidate's graph, and a note for the report


@dataclass(frozen=True)
class Recipe:
    name: str
    target: str
    precision: str
    make: Callable[[Inputs, Path], Made]
    why_not: Callable[[Conditions], str | None] = lambda _: None

    def skip_reason(self, cond: Conditions) -> str | None:
        return self.why_not(cond)


# --- when a recipe does not apply ----------------------------------------------------------------

def _fp16_on_ort(c: Conditions) -> str | None:
    if c.on_cpu and c.auto:
        return ("ONNX Runtime's CPU provider has almost no FP16 kernels: the graph would run as casts "
                "around FP32 kernels (ask for precision fp16 to build it anyway)")
    return None


def _bf16_on_ort(c: Conditions) -> str | None:
    return "ONNX Runtime has BF16 kernels for few ops (ask for precision bf16 to try anyway)" if c.auto else None


def _bf16_on_trt(c: Conditions) -> str | None:
    if c.compute_capability is not None and c.compute_capability < 8.0:
        return f"BF16 needs compute capability 8.0+, this GPU is {c.compute_capability}"
    return None


def _cpu_only(c: Conditions) -> str | None:
    return None if c.on_cpu else "dynamic INT8 kernels are CPU-only in ONNX Runtime"


def _needs_calibration(what: str) -> Callable[[Conditions], str | None]:
    def check(c: Conditions) -> str | None:
        return None if c.has_calibration else (
            f"{what} needs calibration data: calibration.uri, or calibration.synthetic: true")
    return check


def _smoothquant(c: Conditions) -> str | None:
    return _cpu_only(c) or _needs_calibration("SmoothQuant (activation ranges)")(c)


def _fp8_on_trt(c: Conditions) -> str | None:
    if c.compute_capability is not None and c.compute_capability < 8.9:
        return f"FP8 needs compute capability 8.9+ (Ada/Hopper), this GPU is {c.compute_capability}"
    return _needs_calibration("FP8 (Q/DQ)")(c)


def _no_fp8_on_ort(_: Conditions) -> str:
    return "ONNX Runtime has no FP8 kernels: FP8 needs TensorRT on a GPU"


# --- how a recipe makes its graph -----------------------------------------------------------------

def _fp32(i: Inputs, _: Path) -> Made:
    return i.base, i.base_note


def _fp16(i: Inputs, out: Path) -> Made:
    return compress.to_fp16(i.base, out), None


def _bf16(i: Inputs, out: Path) -> Made:
    return compress.to_bf16(i.base, out), None


def _dynamic_targets(i: Inputs) -> list[str]:
    targets = compress.dynamic_int8_targets(i.base)
    if not targets:
        raise Skip("no MatMul with constant weights to quantize dynamically (convolutions need static "
                   "INT8 with calibration data)")
    return targets


def _int8_dynamic(i: Inputs, out: Path) -> Made:
    _dynamic_targets(i)
    return compress.quantize_int8_dynamic(i.base, out), None


def _int8_per_token(i: Inputs, out: Path) -> Made:
    _dynamic_targets(i)
    made, count = compress.quantize_int8_per_token(i.base, out)
    return made, f"{count} LayerNorm- or activation-fed MatMuls scaled per token before dynamic INT8"


def _int8_smoothquant(i: Inputs, out: Path) -> Made:
    _dynamic_targets(i)
    assert i.calibration is not None  # why_not guarantees it
    smoothed, count = compress.smooth_norm_inputs(i.base, out.with_suffix(".smooth.onnx"), i.calibration,
                                                  i.threads)
    return (compress.quantize_int8_dynamic(smoothed, out),
            f"{count} LayerNorm-fed matrix products smoothed (alpha 0.5)")


def _int8_qdq_ort(i: Inputs, out: Path) -> Made:
    assert i.calibration is not None
    return compress.quantize_int8_static(i.base, out, i.calibration, for_tensorrt=False), None


def _int8_qdq_trt(i: Inputs, out: Path) -> Made:
    """Static INT8 Q/DQ (the only INT8 form a strongly typed TensorRT network takes), with the
    recipe that holds a transformer's accuracy: SmoothQuant on the LayerNorm-fed products, INT8
    only where a constant weight meets an activation, and the FFN down-projections and the
    activation x activation products (attention) left in FP32. Measured on CPU with ONNX Runtime
    running the same Q/DQ graph, MiniLM keeps cosine >= 0.994 over every output (plain per-tensor
    Q/DQ of every MatMul: 0.77); tests/builder/test_build_minilm.py holds it to the 0.99 gate."""
    assert i.calibration is not None
    notes = []
    try:
        graph, count = compress.smooth_norm_inputs(i.graph, out.with_suffix(".smooth.onnx"), i.calibration,
                                                   i.threads)
        notes.append(f"{count} LayerNorm-fed matrix products smoothed (alpha 0.5)")
    except Skip:
        graph = i.graph  # no LayerNorm (a CNN): nothing to smooth
    down, attention = compress.activation_fed_matmuls(graph), compress.activation_matmuls(graph)
    if down or attention:
        notes.append(f"{len(down)} FFN down-projections and {len(attention)} activation x activation "
                     "products kept in FP32")
    made = compress.quantize_int8_static(graph, out, i.calibration, for_tensorrt=True, exclude=down + attention)
    return made, "; ".join(notes) or None


def _fp8_qdq(i: Inputs, out: Path) -> Made:
    assert i.calibration is not None
    return compress.quantize_fp8(i.graph, out, i.calibration), None


def _unreachable(_: Inputs, __: Path) -> Made:
    raise AssertionError("a recipe whose why_not always answers is never made")


RECIPES: tuple[Recipe, ...] = (
    Recipe("tensorrt-fp32", "tensorrt", "fp32", _fp32),
    Recipe("tensorrt-fp16", "tensorrt", "fp16", _fp16),
    Recipe("tensorrt-bf16", "tensorrt", "bf16", _bf16, _bf16_on_trt),
    Recipe("tensorrt-int8-qdq", "tensorrt", "int8", _int8_qdq_trt, _needs_calibration("static INT8 (Q/DQ)")),
    Recipe("tensorrt-fp8-qdq", "tensorrt", "fp8", _fp8_qdq, _fp8_on_trt),
    Recipe("onnxruntime-fp32", "onnxruntime", "fp32", _fp32),
    Recipe("onnxruntime-fp16", "onnxruntime", "fp16", _fp16, _fp16_on_ort),
    Recipe("onnxruntime-bf16", "onnxruntime", "bf16", _bf16, _bf16_on_ort),
    Recipe("onnxruntime-int8-dynamic", "onnxruntime", "int8", _int8_dynamic, _cpu_only),
    Recipe("onnxruntime-int8-per-token", "onnxruntime", "int8", _int8_per_token, _cpu_only),
    Recipe("onnxruntime-int8-smoothquant", "onnxruntime", "int8", _int8_smoothquant, _smoothquant),
    Recipe("onnxruntime-int8-qdq", "onnxruntime", "int8", _int8_qdq_ort, _needs_calibration("static INT8 (Q/DQ)")),
    Recipe("onnxruntime-fp8", "onnxruntime", "fp8", _unreachable, _no_fp8_on_ort),
)


def plan(target: str, precision: str) -> list[Recipe]:
    """The recipes a build tries, in order: the target's rows, within the spec's precision
    (``auto``: all of them)."""
    return [r for r in RECIPES if r.target == target and precision in ("auto", r.precision)]
