"""Weight pruning on the PyTorch model, before export.

- ``2:4``: in every group of four consecutive weights along the input dimension, the two of
  smallest magnitude are zeroed (the pattern Ampere+ sparse tensor cores accelerate; TensorRT
  uses it with ``BuilderFlag.SPARSE_WEIGHTS``).
- ``unstructured``: per layer, the ``ratio`` of weights with the smallest magnitude are zeroed.

Only Linear / Conv weights are pruned (embeddings, norms and biases are left alone). Pruning
without fine-tuning costs accuracy; the accuracy gate against the *unpruned* FP32 reference
decides whether the result is usable, and ONNX input cannot be pruned (SKIPPED with a warning).
"""

from __future__ import annotations

import logging

from optimodel.api.spec import Sparsity

log = logging.getLogger("optimodel.builder")


def _prunable(module):
    for name, param in module.named_parameters():
        if param.dim() < 2 or not name.endswith("weight"):
            continue
        lowered = name.lower()
        if "embed" in lowered or "norm" in lowered or "position" in lowered:
            continue
        yield name, param


def mask_2_4(weight):
    """Keep the two largest-magnitude weights of every 4 along the input-channel dimension.

    Linear [out, in]: groups along ``in``. Conv [out, in, kh, kw]: groups along ``in`` at every
    kernel position (the layout TensorRT's sparse convolution kernels expect). Returns None when
    the input size is not a multiple of 4 (the layer then stays dense).
    """
    import torch

    conv = weight.dim() > 2
    w = weight.movedim(1, -1) if conv else weight  # input channels last
    if w.shape[-1] % 4:
        return None
    groups = w.abs().reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    keep = keep.reshape(w.shape)
    return keep.movedim(-1, 1) if conv else keep


def prune(module, sparsity: Sparsity) -> str:
    """Prune in place; returns a one-line summary (layers touched, overall zero fraction)."""
    import torch

    touched, skipped, zeros, total = 0, 0, 0, 0
    with torch.no_grad():
        for name, param in _prunable(module):
            if sparsity.pattern == "2:4":
                keep = mask_2_4(param.data)
                if keep is None:
                    skipped += 1
                    continue
            else:
                k = int(param.numel() * sparsity.ratio)
                if k == 0:
                    continue
                threshold = param.data.abs().flatten().kthvalue(k).values
                keep = param.data.abs() > threshold
            param.data.mul_(keep.to(param.dtype))
            touched += 1
            zeros += int((param.data == 0).sum())
            total += param.numel()
    detail = (f"{sparsity.pattern}: {touched} layers pruned, {zeros / max(total, 1):.1%} of their "
              f"weights zero")
    if skipped:
        detail += f"; {skipped} layers left dense (input size not a multiple of 4)"
    log.info("pruned: %s", detail)
    return detail
