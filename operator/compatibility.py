"""Can the serving image load an engine? A pure check, made before an engine is rolled out.

A TensorRT plan loads only on the TensorRT release it was built with (major.minor.patch; TensorRT's
"version compatible" engines aside, which we do not build). The builder records its TensorRT in
the report (``engine.runtimeVersion``, e.g. ``tensorrt 10.8.0.43``); the operator knows the
TensorRT of the Triton image it serves with from its settings (the chart's
``triton.tensorrtVersion``, which belongs with ``triton.image.tag``). A mismatch found here is
refused with both versions named, and the previous engine keeps serving, instead of Triton pods
that crash-loop on a plan they cannot deserialize.
"""

from __future__ import annotations

import re

from optimodel.triton.layout import TENSORRT_PLATFORM

VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?")
COMPARED = 3  # major.minor.patch: TensorRT's engine compatibility unit (the build number may differ)


def _parts(version: str) -> tuple[int, ...] | None:
    found = VERSION.search(version)
    return tuple(int(p) for p in found.groups() if p is not None) if found else None


def tensorrt_mismatch(platform: str | None, runtime_version: str | None, triton_tensorrt: str | None,
                      triton_image: str) -> str | None:
    """Why a built engine cannot be served by the Triton image, or None when it can (or when
    the engine is not a TensorRT plan, or no Triton TensorRT version is configured)."""
    if platform != TENSORRT_PLATFORM or not triton_tensorrt:
        return None
    built, serving = _parts(runtime_version or ""), _parts(triton_tensorrt)
    if built is None:
        return (f"the engine is a TensorRT plan, but the build reported no TensorRT version "
                f"({runtime_version!r}): cannot confirm that {triton_image} (TensorRT {triton_tensorrt}) loads it")
    n = min(COMPARED, len(built), len(serving or ()))
    if serving is None or built[:n] != serving[:n]:
        return (f"the engine was built with TensorRT {'.'.join(map(str, built))}, but the Triton image "
                f"{triton_image} runs TensorRT {triton_tensorrt} (triton.tensorrtVersion): a plan loads only on "
                f"the TensorRT release it was built with. Use the builder image of the same NGC release as "
                f"the Triton image (e.g. tensorrt:25.01 with tritonserver:25.01), or change both together")
    return None
