"""Runnables with one interface: the PyTorch baseline, ONNX Runtime sessions (TensorRT lives in
``tensorrt_engine``).

Every runner splits a call into ``prepare`` (convert numpy feeds to the runtime's native
buffers, untimed) and ``run_prepared`` (the timed part), so the benchmark measures inference,
not conversions, for baseline and candidates alike.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from optimodel.builder.errors import BuildError

log = logging.getLogger("optimodel.builder")

Feeds = dict[str, np.ndarray]


class Runner(Protocol):
    runtime: str  # e.g. pytorch-eager-fp32, onnxruntime-cpu-1.23.2, tensorrt-10.8
    device: str

    def prepare(self, feeds: Feeds) -> Any: ...

    def run_prepared(self, prepared: Any) -> Any: ...

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]: ...


class TorchRunner:
    """A PyTorch module run eagerly in FP32, as users run it (the baseline and FP32 reference).

    On a GPU builder it runs on CUDA (that is how users of a GPU service run it), synchronising
    after each call so timings are honest.
    """

    def __init__(self, module, input_names: list[str], output_names: list[str], device: str) -> None:
        import torch

        self.torch = torch
        self.cuda = device.startswith("cuda")
        if self.cuda:
            # A true FP32 reference: no TF32 shortcuts in cuBLAS/cuDNN.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.module = module.to("cuda") if self.cuda else module
        self.input_names = input_names
        self.output_names = output_names
        self.runtime = "pytorch-eager-fp32"
        self.device = device

    def prepare(self, feeds: Feeds) -> tuple:
        tensors = tuple(self.torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names)
        return tuple(t.to("cuda") for t in tensors) if self.cuda else tensors

    def run_prepared(self, prepared: tuple) -> Any:
        with self.torch.inference_mode():
            out = self.module(*prepared)
        if self.cuda:
            self.torch.cuda.synchronize()
        return out

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]:
        result = self.run_prepared(self.prepare(feeds))
        if isinstance(result, self.torch.Tensor):
            result = (result,)
        if isinstance(result, dict):
            result = tuple(result.values())
        return {name: t.detach().float().cpu().numpy() if t.is_floating_point() else t.detach().cpu().numpy()
                for name, t in zip(self.output_names, result)}


def ort_session(path: Path, threads: int, providers: list[str] | None = None,
                optimization: str = "all"):
    """An InferenceSession with explicit, reproducible threading and graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def ort_error_reason(exc: Exception) -> str:
    """Which contract reason an ONNX Runtime load error means."""
    text = str(exc)
    unsupported = ("NOT_IMPLEMENTED", "Could not find an implementation", "is not a registered function/op",
                   "No Op registered", "not supported", "Unsupported", "domain_version")
    return "UnsupportedModel" if any(s in text for s in unsupported) else "ModelLoadFailed"


class OrtRunner:
    """An ONNX Runtime session on a candidate graph."""

    def __init__(self, path: Path, threads: int, providers: list[str] | None = None,
                 device: str = "cpu") -> None:
        import onnxruntime as ort

        self.path = path
        self.session = ort_session(path, threads, providers)
        provider = self.session.get_providers()[0].replace("ExecutionProvider", "").lower()
        self.runtime = f"onnxruntime-{provider}-{ort.__version__}"
        self.device = device
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._types = {i.name: _ORT_TYPES.get(i.type) for i in self.session.get_inputs()}

    def prepare(self, feeds: Feeds) -> Feeds:
        out = {}
        for name, dtype in self._types.items():
            if name not in feeds:
                raise BuildError("InternalError", f"no data for input {name}")
            arr = feeds[name]
            out[name] = np.ascontiguousarray(arr if dtype is None else arr.astype(dtype, copy=False))
        return out

    def run_prepared(self, prepared: Feeds) -> list:
        return self.session.run(None, prepared)

    def __call__(self, feeds: Feeds) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.run_prepared(self.prepare(feeds))))


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}
