"""Where a build's candidates run: the target runtime and the device (the resolve-target step).

A small value the later steps take as an argument, instead of reading ``target``/``device``
attributes off the build: which runtime compiles the candidates, on which device they are
measured, with how many threads, and which ONNX Runtime providers that means.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from optimodel.api.spec import BuildSpec
from optimodel.builder import hardware
from optimodel.builder.errors import BuildError

log = logging.getLogger("optimodel.builder")


@dataclass(frozen=True)
class Machine:
    target: str  # "tensorrt" | "onnxruntime"
    device: str  # "cuda" | "cpu"
    threads: int  # intra-op threads of every runner, the PyTorch baseline's included

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def gpu(self) -> hardware.GpuInfo | None:
        return hardware.gpu() if self.on_gpu else None

    def label(self) -> str:
        if self.on_gpu:
            gpu = hardware.gpu()
            return f"cuda ({gpu.product}, sm {gpu.compute_capability})" if gpu else "cuda"
        return f"cpu ({hardware.cpu_name()}, {self.threads} threads)"

    def providers(self) -> list[str]:
        if self.on_gpu and self.target == "onnxruntime":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]


def check_optimization(spec: BuildSpec) -> None:
    """The spec rules the CRD enforces, re-checked for callers that bypass the API server."""
    opt = spec.optimization
    if opt.precision in ("int8", "fp8") and not (opt.calibration and (opt.calibration.uri or opt.calibration.synthetic)):
        raise BuildError("InvalidSpec", "precision int8 and fp8 need calibration.uri, or "
                         "calibration.synthetic: true to opt in to random calibration data")
    if opt.precision == "fp8" and opt.target == "onnxruntime":
        raise BuildError("InvalidSpec", "precision fp8 needs target tensorrt or auto "
                         "(ONNX Runtime has no FP8 kernels)")
    if opt.max_batch_size < 1:
        raise BuildError("InvalidSpec", "maxBatchSize must be at least 1")


def _ort_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def resolve(spec: BuildSpec, threads: int) -> tuple[Machine, list[str]]:
    """``target: auto`` is TensorRT when a CUDA GPU and the tensorrt package are present, else
    ONNX Runtime (on the GPU when its CUDA provider is there). Returns the machine and warnings."""
    opt = spec.optimization
    why_not_trt = hardware.tensorrt_available()
    if opt.target == "tensorrt" and why_not_trt:
        raise BuildError("CompileFailed", f"target tensorrt, but {why_not_trt}")
    target = "tensorrt" if opt.target == "tensorrt" or (opt.target == "auto" and not why_not_trt) else "onnxruntime"
    gpu = hardware.gpu()
    device = "cuda" if target == "tensorrt" or (gpu is not None and _ort_has_cuda()) else "cpu"
    if target == "onnxruntime" and opt.target == "auto" and why_not_trt:
        log.info("target auto -> onnxruntime: %s", why_not_trt)
    warnings = []
    if spec.gpu_product and gpu and gpu.product.replace(" ", "-") != spec.gpu_product:
        warnings.append(f"spec targets GPU {spec.gpu_product}, but the builder runs on "
                        f"{gpu.product}: the engine is tuned for the builder's GPU")
    if spec.gpu_product and device != "cuda":
        warnings.append(f"spec targets GPU {spec.gpu_product}, but this builder has no "
                        "usable GPU runtime: the engine is an ONNX Runtime CPU engine, "
                        "measured on this CPU")
    return Machine(target, device, threads), warnings
