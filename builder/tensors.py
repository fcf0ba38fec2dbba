"""Tensor signatures and the three dtype vocabularies the builder translates between.

A model input is described once (``TensorInfo``: name, Triton dtype, shape with the batch axis
first and -1 for dynamic dimensions) and rendered to numpy, ONNX and Triton's model config from
here, so the repository's config.pbtxt always matches the graph it ships.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from optimodel.triton.config import Tensor, WarmupSample

# Triton spelling (TYPE_ prefix dropped, as in the spec's TensorSpec) -> numpy dtype.
TRITON_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}

# ONNX TensorProto elem_type -> Triton spelling.
ONNX_TO_TRITON: dict[int, str] = {
    1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16",
    11: "FP64", 16: "BF16",
}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output: shape includes the batch axis first; -1 = dynamic."""

    name: str
    dtype: str  # Triton spelling: FP32, INT64, ...
    shape: tuple[int, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        if self.dtype not in TRITON_TO_NUMPY:
            raise ValueError(f"{self.name}: dtype {self.dtype} has no numpy equivalent")
        return TRITON_TO_NUMPY[self.dtype]

    @property
    def dims(self) -> tuple[int, ...]:
        """Shape without the batch axis, as Triton's config wants it (max_batch_size > 0)."""
        return self.shape[1:]

    def triton(self) -> Tensor:
        """This tensor as Triton's config declares it (``optimodel.triton.config``)."""
        return Tensor(self.name, self.dtype, self.dims)

    def concrete(self, batch: int, seq_len: int | None = None, fill: int = 1) -> tuple[int, ...]:
        """A runnable shape: batch first, dynamic non-batch dims set to ``seq_len`` (or ``fill``)."""
        rest = tuple((seq_len or fill) if d < 0 else d for d in self.dims)
        return (batch, *rest)


def warmup_samples(inputs: Sequence[TensorInfo], batch: Mapping[str, np.ndarray]) -> dict[str, WarmupSample]:
    """The first sample of each input in ``batch`` as a Triton warmup file holds it.

    Triton reads warmup files as the raw little-endian bytes of one sample.
    """
    samples = {}
    for info in inputs:
        sample = np.ascontiguousarray(batch[info.name][0].astype(info.numpy_dtype))
        samples[info.name] = WarmupSample(
            dims=tuple(int(d) for d in batch[info.name].shape[1:]),
            data=sample.astype(sample.dtype.newbyteorder("<")).tobytes())
    return samples
