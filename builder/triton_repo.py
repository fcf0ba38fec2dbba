"""The Triton model repository, written through Triton's model-config protobuf.

Layout (under the staged output directory):

    repository/<name>/config.pbtxt          platform onnxruntime_onnx or tensorrt_plan
    repository/<name>/1/model.onnx | model.plan
    repository/<name>/warmup/<input>        real sample inputs for model_warmup (raw bytes)
    repository-python/<name>/config.pbtxt   backend "python" (onnxruntime target only)
    repository-python/<name>/1/model.py     runs ONNX Runtime on 1/model.onnx, batching requests
    repository-python/<name>/1/model.onnx
    repository-python/<name>/warmup/<input>

The Python-backend variant exists for Triton builds without the ONNX Runtime backend (the
pytriton wheel bundles only the Python backend). ``config.pbtxt`` is never templated as text:
it is a ``ModelConfig`` message rendered with ``text_format``, so it always parses.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from optimodel.builder.tensors import TensorInfo

PYTHON_MODEL_TEMPLATE = "triton_python_model.py.tmpl"
DEFAULT_QUEUE_DELAY_US = 100

_TYPES = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "INT8": "TYPE_INT8", "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "BF16": "TYPE_BF16", "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
}


@dataclass(frozen=True)
class RepositorySpec:
    """Everything config.pbtxt says, independent of where it is written."""

    name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    max_batch_size: int
    gpu: bool
    preferred_batch_sizes: list[int]
    warmup: dict[str, np.ndarray]  # one sample per input, batch axis included (batch 1)
    cpu_threads: int = 0  # intra-op threads for ONNX Runtime (0 = runtime default)


def model_config(spec: RepositorySpec, *, platform: str | None = None, backend: str | None = None):
    """The ``ModelConfig`` protobuf for one repository variant."""
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = mc.ModelConfig(name=spec.name, max_batch_size=spec.max_batch_size)
    if platform:
        cfg.platform = platform
    if backend:
        cfg.backend = backend
    for info in spec.inputs:
        tensor = cfg.input.add()
        tensor.name = info.name
        tensor.data_type = mc.DataType.Value(_TYPES[info.dtype])
        tensor.dims.extend(info.dims)
    for info in spec.outputs:
        tensor = cfg.output.add()
        tensor.name = info.name
        tensor.data_type = mc.DataType.Value(_TYPES[info.dtype])
        tensor.dims.extend(info.dims)
    cfg.dynamic_batching.max_queue_delay_microseconds = DEFAULT_QUEUE_DELAY_US
    cfg.dynamic_batching.preferred_batch_size.extend(
        [b for b in spec.preferred_batch_sizes if b <= spec.max_batch_size])
    group = cfg.instance_group.add()
    group.count = 1
    group.kind = mc.ModelInstanceGroup.KIND_GPU if spec.gpu else mc.ModelInstanceGroup.KIND_CPU
    warm = cfg.model_warmup.add()
    warm.name = "sample"
    warm.batch_size = 1
    for info in spec.inputs:
        sample = spec.warmup[info.name]
        entry = warm.inputs[info.name]
        entry.data_type = mc.DataType.Value(_TYPES[info.dtype])
        entry.dims.extend(sample.shape[1:])
        entry.input_data_file = info.name
    if platform == "onnxruntime_onnx" and spec.cpu_threads:
        cfg.parameters["intra_op_thread_count"].string_value = str(spec.cpu_threads)
    if backend == "python":
        cfg.parameters["intra_op_thread_count"].string_value = str(spec.cpu_threads)
    return cfg


def render(cfg) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)


def _write_model_dir(root: Path, spec: RepositorySpec, cfg, artifact: Path, artifact_name: str) -> Path:
    model_dir = root / spec.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(render(cfg))
    shutil.copyfile(artifact, model_dir / "1" / artifact_name)
    warm = model_dir / "warmup"
    warm.mkdir(exist_ok=True)
    for info in spec.inputs:
        # Triton reads warmup files as the raw little-endian bytes of one sample.
        sample = np.ascontiguousarray(spec.warmup[info.name][0].astype(info.numpy_dtype))
        (warm / info.name).write_bytes(sample.astype(sample.dtype.newbyteorder("<")).tobytes())
    return model_dir


def write_onnxruntime(out: Path, spec: RepositorySpec, onnx_path: Path) -> list[Path]:
    """``repository/`` (ONNX Runtime backend) and ``repository-python/`` (Python backend)."""
    main = _write_model_dir(out / "repository", spec,
                            model_config(spec, platform="onnxruntime_onnx"), onnx_path, "model.onnx")
    py = _write_model_dir(out / "repository-python", spec,
                          model_config(spec, backend="python"), onnx_path, "model.onnx")
    template = resources.files("optimodel.builder").joinpath(PYTHON_MODEL_TEMPLATE).read_text()
    (py / "1" / "model.py").write_text(template)
    return [main, py]


def write_tensorrt(out: Path, spec: RepositorySpec, plan_path: Path) -> list[Path]:
    return [_write_model_dir(out / "repository", spec,
                             model_config(spec, platform="tensorrt_plan"), plan_path, "model.plan")]
