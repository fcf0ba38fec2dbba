"""TensorRT: build a strongly typed engine from an ONNX graph, and run it for verify/benchmark.

Written against the TensorRT >= 10 Python API. Precision comes from the graph (strongly typed
network): FP16/BF16 graphs are converted ONNX, INT8/FP8 graphs carry explicit Q/DQ nodes, so no
precision flags are set; TF32 is cleared, as in the PyTorch baseline, so FP32 means FP32. One
optimization profile spans batch 1..maxBatchSize (opt = the headline batch) and, for text
models, sequence 1..max (opt = the benchmark length). A timing cache in the work directory makes
rebuilds of sibling candidates faster. Engines only load on the GPU architecture and TensorRT
version they were built with; both go into the report.

Nothing here is imported unless a GPU and the ``tensorrt`` package are present.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from optimodel.builder.errors import BuildError
from optimodel.builder.tensors import TensorInfo

log = logging.getLogger("optimodel.builder")

WORKSPACE_BYTES = 8 << 30


def version() -> str:
    import tensorrt as trt

    return trt.__version__


def build_engine(onnx_path: Path, plan_path: Path, inputs: list[TensorInfo], *, max_batch: int,
                 opt_batch: int, seq_len: int | None, max_seq_len: int | None,
                 timing_cache: Path, hardware_compatibility: str = "none",
                 sparse_weights: bool = False) -> Path:
    """Parse, build and serialize ``model.plan``; parser errors name the unsupported nodes."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        text = "; ".join(errors)[:800]
        reason = "UnsupportedModel" if "unsupported" in text.lower() or "no importer" in text.lower() else "CompileFailed"
        raise BuildError(reason, f"TensorRT cannot parse {onnx_path.name}: {text}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    # TF32 parity with the baseline (runners.TorchRunner turns it off in cuBLAS/cuDNN): TensorRT
    # enables TF32 for FP32 tensors by default, which would make a "tensorrt-fp32" speedup partly
    # a TF32-versus-FP32 one. The report states it (versions["tf32"]).
    config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    for info in inputs:
        lo, opt, hi = [1], [opt_batch], [max_batch]
        for d in info.dims:
            if d < 0:
                lo.append(1)
                opt.append(seq_len or 1)
                hi.append(max(max_seq_len or seq_len or 1, seq_len or 1))
            else:
                lo.append(d)
                opt.append(d)
                hi.append(d)
        profile.set_shape(info.name, tuple(lo), tuple(opt), tuple(hi))
    config.add_optimization_profile(profile)

    cache_bytes = timing_cache.read_bytes() if timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    if hardware_compatibility != "none":
        levels = {"ampere+": "AMPERE_PLUS", "same-compute-capability": "SAME_COMPUTE_CAPABILITY"}
        level = getattr(trt.HardwareCompatibilityLevel, levels[hardware_compatibility], None)
        if level is None:
            raise BuildError("CompileFailed", f"TensorRT {trt.__version__} has no hardware "
                             f"compatibility level {hardware_compatibility}")
        config.hardware_compatibility_level = level
    if sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError("CompileFailed", f"TensorRT failed to build an engine from {onnx_path.name} "
                         "(see the builder log for TensorRT's messages)")
    plan_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log.info("built %s (%.1f MB)", plan_path.name, plan_path.stat().st_size / 1e6)
    return plan_path


class TrtRunner:
    """Runs a serialized engine with torch CUDA tensors as I/O buffers (execute_async_v3)."""

    def __init__(self, plan_path: Path, device: str) -> None:
        import tensorrt as trt
        import torch

        self.torch = torch
        self.trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime_obj = trt.Runtime(logger)
        self.engine = self.runtime_obj.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise BuildError("CompileFailed", f"TensorRT cannot deserialize {plan_path.name}")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.runtime = f"tensorrt-{trt.__version__}"
        self.device = device

    def _torch_dtype(self, name: str):
        trt, torch = self.trt, self.torch
        return {
            trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
            trt.int64: torch.int64, trt.int32: torch.int32, trt.int8: torch.int8,
            trt.bool: torch.bool, trt.uint8: torch.uint8,
        }[self.engine.get_tensor_dtype(name)]

    def prepare(self, feeds: dict[str, np.ndarray]):
        torch = self.torch
        inputs = {}
        for name in self.input_names:
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).to("cuda").to(self._torch_dtype(name))
            inputs[name] = tensor.contiguous()
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            tensor = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            outputs[name] = tensor
            self.context.set_tensor_address(name, tensor.data_ptr())
        return inputs, outputs

    def run_prepared(self, prepared):
        _, outputs = prepared
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BuildError("CompileFailed", "TensorRT execution failed")
        self.stream.synchronize()
        return outputs

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.run_prepared(self.prepare(feeds))
        return {n: t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
                for n, t in outputs.items()}
