"""``config.pbtxt``: the ``ModelConfig`` the builder writes, and parsing / rendering one.

``config.pbtxt`` is never templated as text: it is Triton's ``ModelConfig`` protobuf message
(``tritonclient.grpc.model_config_pb2``) rendered with ``text_format``, so it always parses.
What it says is described by ``ModelSpec``, in plain values: the builder translates its own
tensor descriptions into it, so nothing here imports the builder (or numpy).

The protobuf module is imported lazily (``model_config_pb2()``): the operator image imports
this package, and only the stager there has ``tritonclient``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from optimodel.triton.layout import ONNXRUNTIME_PLATFORM, PYTHON_BACKEND

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

DEFAULT_QUEUE_DELAY_US = 100
WARMUP_NAME = "sample"

_TYPES = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "INT8": "TYPE_INT8", "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64", "FP16": "TYPE_FP16", "BF16": "TYPE_BF16", "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
}


class ProtobufUnavailable(ImportError):
    """``tritonclient[grpc]`` (which carries Triton's ``model_config`` protobuf) is missing."""


def model_config_pb2():
    """Triton's ``model_config_pb2`` module (``ModelConfig``, ``DataType``, ...)."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:  # pragma: no cover - depends on the image
        raise ProtobufUnavailable("tritonclient[grpc] (Triton's model_config protobuf) is not "
                                  "installed: install optimodel[serve]") from exc
    return model_config_pb2


@dataclass(frozen=True)
class Tensor:
    """One input or output as ``config.pbtxt`` declares it."""

    name: str
    dtype: str  # Triton's spelling without TYPE_: FP32, INT64, ...
    dims: tuple[int, ...]  # without the batch axis; -1 = dynamic


@dataclass(frozen=True)
class WarmupSample:
    """One sample of one input, as Triton's ``model_warmup`` reads it from a file."""

    dims: tuple[int, ...]  # concrete, without the batch axis
    data: bytes  # the raw little-endian bytes of the sample


@dataclass(frozen=True)
class ModelSpec:
    """Everything config.pbtxt says, independent of where it is written."""

    name: str
    inputs: Sequence[Tensor]
    outputs: Sequence[Tensor]
    max_batch_size: int
    gpu: bool
    preferred_batch_sizes: Sequence[int]
    warmup: Mapping[str, WarmupSample]  # one sample per input
    cpu_threads: int = 0  # intra-op threads for ONNX Runtime (0 = runtime default)


def model_config(spec: ModelSpec, *, platform: str | None = None,
                 backend: str | None = None) -> "ModelConfig":
    """The ``ModelConfig`` protobuf for one repository variant."""
    mc = model_config_pb2()

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
    warm.name = WARMUP_NAME
    warm.batch_size = 1
    for info in spec.inputs:
        entry = warm.inputs[info.name]
        entry.data_type = mc.DataType.Value(_TYPES[info.dtype])
        entry.dims.extend(spec.warmup[info.name].dims)
        entry.input_data_file = info.name
    if platform == ONNXRUNTIME_PLATFORM and spec.cpu_threads:
        cfg.parameters["intra_op_thread_count"].string_value = str(spec.cpu_threads)
    if backend == PYTHON_BACKEND:
        cfg.parameters["intra_op_thread_count"].string_value = str(spec.cpu_threads)
    return cfg


def parse_config(text: str) -> "ModelConfig":
    """A ``config.pbtxt``'s text as a ``ModelConfig`` (raises ``text_format.ParseError``)."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2().ModelConfig())


def render_config(config: "ModelConfig") -> str:
    """A ``ModelConfig`` as the text of a ``config.pbtxt``."""
    from google.protobuf import text_format

    return text_format.MessageToString(config)
