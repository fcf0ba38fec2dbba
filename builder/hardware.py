"""What the build runs on: thread budget, CPU/GPU identity, runtime versions.

TensorRT engines load only on the GPU architecture and TensorRT version they were built for,
so both are recorded in the report; CPU timings are only comparable at equal thread counts, so
one thread budget is applied to PyTorch and ONNX Runtime alike.
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
from dataclasses import dataclass

THREADS_ENV = "OPTIMODEL_THREADS"


def cpu_threads() -> int:
    """Cores this process may use (cgroup/affinity aware), or ``$OPTIMODEL_THREADS``."""
    if os.environ.get(THREADS_ENV):
        return max(1, int(os.environ[THREADS_ENV]))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class GpuInfo:
    product: str
    compute_capability: str
    memory_bytes: int


@functools.lru_cache(maxsize=1)
def gpu() -> GpuInfo | None:
    """The first CUDA device as PyTorch sees it, or None without one."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return GpuInfo(props.name, f"{props.major}.{props.minor}", int(props.total_memory))
    except Exception:
        return None


def tensorrt_available() -> str | None:
    """None when TensorRT can be used here, else why not (for SKIPPED reasons and logs)."""
    if gpu() is None:
        return "no CUDA GPU is visible (torch.cuda.is_available() is false)"
    try:
        importlib.import_module("tensorrt")
    except Exception as exc:
        return f"the tensorrt package is not importable ({type(exc).__name__}: {exc})"
    return None


def versions() -> dict[str, str]:
    """Versions of everything that shapes an engine, for the report."""
    out = {"python": platform.python_version()}
    for name in ("torch", "onnx", "onnxruntime", "transformers", "tensorrt", "modelopt", "numpy"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:
            continue
    try:
        import torch

        if torch.version.cuda:
            out["torch-cuda-build"] = torch.version.cuda
    except Exception:
        pass
    return out


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass
