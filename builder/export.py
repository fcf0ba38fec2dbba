"""PyTorch -> ONNX with a dynamic batch axis (and a dynamic sequence axis for text models).

Compression happens on the ONNX graph so one artifact serves ONNX Runtime and TensorRT alike.
The TorchScript-based exporter (``dynamo=False``) is used on purpose: it accepts ScriptModules
(the dynamo exporter does not) and its BERT graphs match the patterns that onnxruntime's
transformer fusions and TensorRT's Myelin fusions recognise.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from optimodel.builder.errors import wrap
from optimodel.builder.loader import LoadedModel

log = logging.getLogger("optimodel.builder")

OPSET = 17


def export_onnx(model: LoadedModel, sample: dict[str, np.ndarray], out: Path) -> Path:
    """Export ``model.export_module`` to ``out``; failures are ``ExportFailed`` with the cause."""
    import onnx
    import torch

    names_in = [i.name for i in model.inputs]
    names_out = [o.name for o in model.outputs]
    dynamic_axes: dict[str, dict[int, str]] = {}
    for info in model.inputs + model.outputs:
        axes = {0: "batch"}
        for axis, dim in enumerate(info.shape[1:], start=1):
            if dim < 0:
                axes[axis] = "sequence" if axis == 1 else f"{info.name}_dim{axis}"
        dynamic_axes[info.name] = axes
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in names_in)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.export_module, args, str(out), input_names=names_in, output_names=names_out,
                dynamic_axes=dynamic_axes, opset_version=OPSET, do_constant_folding=True, dynamo=False,
            )
        onnx.checker.check_model(str(out))
    except Exception as exc:
        raise wrap("ExportFailed", f"ONNX export failed: {type(exc).__name__}: {str(exc)[:600]}", exc) from exc
    log.info("exported %s (%.1f MB)", out.name, out.stat().st_size / 1e6)
    return out
