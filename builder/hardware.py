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
CGROUP2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP1_CFS_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
CGROUP1_CFS_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"


def cpu_threads() -> int:
    """Cores this process may use, or ``$OPTIMODEL_THREADS``: the CPUs it may run on (affinity,
    cpusets), capped by the cgroup's CPU quota (a pod's CPU limit), rounded down, at least 1.

    The cap matters: a pod limited to 4 CPUs on a 64-core node sees 64 CPUs in its affinity
    mask, and 64 threads under a 4-CPU quota are throttled, which makes every timing (and so
    the candidate the build selects) a measure of the throttling.
    """
    if os.environ.get(THREADS_ENV):
        return max(1, int(os.environ[THREADS_ENV]))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(_read(CGROUP2_CPU_MAX), _read(CGROUP1_CFS_QUOTA), _read(CGROUP1_CFS_PERIOD))
    if quota is not None:
        cpus = min(cpus, int(quota))
    return max(1, cpus)


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def cgroup_cpu_quota(cpu_max: str | None, cfs_quota_us: str | None, cfs_period_us: str | None) -> float | None:
    """CPUs the cgroup's quota allows (quota / period), or None without a quota.

    ``cpu_max`` is cgroup v2's ``cpu.max`` (``"max 100000"`` or ``"250000 100000"``); the other
    two are cgroup v1's ``cpu.cfs_quota_us`` (``-1`` = none) and ``cpu.cfs_period_us``.
    """
    try:
        if cpu_max:
            quota, _, period = cpu_max.partition(" ")
            return None if quota == "max" else int(quota) / int(period or 100000)
        if cfs_quota_us and int(cfs_quota_us) > 0 and cfs_period_us:
            return int(cfs_quota_us) / int(cfs_period_us)
    except ValueError:
        return None
    return None


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
