"""``spec.serving`` applied to a built ``ModelConfig``: pure, one protobuf message in, one out.

The builder's ``config.pbtxt`` depends only on the build key (model + optimization); the
serving settings -- dynamic batching, instance groups -- are applied to it when a Triton pod
stages the repository (``optimodel.triton.stage``), so editing ``spec.serving`` never rebuilds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from optimodel.api.spec import Serving
from optimodel.triton.config import model_config_pb2
from optimodel.triton.layout import LAYOUT_DIRS, Layout

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig


def apply_serving(config: "ModelConfig", serving: Serving, *, layout: Layout = "native",
                  model_name: str | None = None) -> "ModelConfig":
    """A copy of ``config`` with ``serving`` applied; the input message is not modified.

    - ``dynamicBatching.enabled``: sets ``dynamic_batching`` (``max_queue_delay_microseconds``,
      ``preferred_batch_size`` -- the spec's list when it has one, ``[]`` included; otherwise the
      sizes the builder measured and wrote) or removes it. A model without a batch dimension
      (``max_batch_size: 0``) gets none.
    - instances: one ``instance_group`` replaces the builder's, of the kind the engine was built
      and measured for. Native layout, an engine measured on GPU (the builder wrote
      ``KIND_GPU``, or no kind) and ``gpu.count`` > 0: ``KIND_GPU``, ``gpus: [0 .. gpu.count-1]``,
      ``count: instancesPerGpu`` (Triton's count is *per listed GPU*), i.e.
      ``instancesPerGpu * gpu.count`` instances in all. Otherwise (Python layout, a model served
      on CPU, or an engine the builder measured on CPU, e.g. ONNX Runtime built on a CPU-only
      runtime): ``KIND_CPU``, ``count: instancesPerGpu * max(1, gpu.count)``.
    - ``model_name``: renames the model (the directory it is staged into must match).

    The engine's own properties (inputs, outputs, ``max_batch_size``, platform/backend) are left
    alone. Raises ``ValueError`` for a preferred batch size above ``max_batch_size``, which
    Triton would refuse at load time.
    """
    mc = model_config_pb2()
    out = mc.ModelConfig()
    out.CopyFrom(config)
    if model_name is not None:
        out.name = model_name

    batching = serving.dynamic_batching
    out.ClearField("dynamic_batching")
    if batching.enabled and out.max_batch_size > 0:
        measured = [b for b in config.dynamic_batching.preferred_batch_size if b <= out.max_batch_size]
        preferred = list(batching.preferred_batch_sizes) if batching.preferred_batch_sizes is not None else measured
        too_big = [b for b in preferred if b > out.max_batch_size]
        if too_big:
            raise ValueError(f"preferredBatchSizes {too_big} exceed the engine's max_batch_size "
                             f"{out.max_batch_size}")
        out.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_microseconds
        out.dynamic_batching.preferred_batch_size.extend(sorted(set(preferred)))
        # Setting a field of a sub-message marks it present; an empty one must be set explicitly
        # so "enabled with Triton's defaults" still renders as `dynamic_batching { }`.
        out.dynamic_batching.SetInParent()

    built_on_cpu = any(g.kind == mc.ModelInstanceGroup.KIND_CPU for g in config.instance_group)
    out.ClearField("instance_group")
    group = out.instance_group.add()
    if layout not in LAYOUT_DIRS:
        raise ValueError(f"unknown layout {layout!r} (native or python)")
    if layout == "native" and serving.gpu.count > 0 and not built_on_cpu:
        group.kind = mc.ModelInstanceGroup.KIND_GPU
        group.count = serving.instances_per_gpu
        group.gpus.extend(range(serving.gpu.count))
    else:  # the Python backend, a model served on CPU (gpu.count 0), or an engine measured on CPU
        group.kind = mc.ModelInstanceGroup.KIND_CPU
        group.count = serving.instances_per_gpu * max(1, serving.gpu.count)
    return out
