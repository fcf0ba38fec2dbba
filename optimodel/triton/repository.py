"""Writing a build's Triton model repositories (the layout is in ``optimodel.triton.layout``).

An ONNX Runtime engine gets both layouts -- ``repository/`` (ONNX Runtime backend) and
``repository-python/`` (Python backend running ONNX Runtime on the same file, with the model in
``python_model.py.tmpl``); a TensorRT plan only ``repository/``. Each model directory holds
``config.pbtxt`` (``optimodel.triton.config``), the engine in the version directory and one
warmup file per input.
"""

from __future__ import annotations

import shutil
import string
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from optimodel.triton import layout
from optimodel.triton.config import ModelSpec, model_config, render_config

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

PYTHON_MODEL_TEMPLATE = "python_model.py.tmpl"


def python_model() -> str:
    """The Python-backend ``model.py``, reading the engine file the layout names."""
    template = resources.files("optimodel.triton").joinpath(PYTHON_MODEL_TEMPLATE).read_text()
    return string.Template(template).substitute(onnx_file=layout.ONNX_FILE)


def write_model_dir(root: Path, spec: ModelSpec, cfg: "ModelConfig", artifact: Path,
                    artifact_name: str) -> Path:
    """``root/<name>/``: ``config.pbtxt``, ``1/<artifact_name>`` and ``warmup/<input>``."""
    model_dir = root / spec.name
    version = model_dir / layout.VERSION
    version.mkdir(parents=True, exist_ok=True)
    (model_dir / layout.CONFIG_FILE).write_text(render_config(cfg))
    shutil.copyfile(artifact, version / artifact_name)
    warm = model_dir / layout.WARMUP_DIR
    warm.mkdir(exist_ok=True)
    for info in spec.inputs:
        (warm / info.name).write_bytes(spec.warmup[info.name].data)
    return model_dir


def write_onnxruntime(out: Path, spec: ModelSpec, onnx_path: Path) -> list[Path]:
    """``repository/`` (ONNX Runtime backend) and ``repository-python/`` (Python backend)."""
    main = write_model_dir(out / layout.NATIVE_DIR, spec,
                           model_config(spec, platform=layout.ONNXRUNTIME_PLATFORM), onnx_path,
                           layout.ONNX_FILE)
    py = write_model_dir(out / layout.PYTHON_DIR, spec,
                         model_config(spec, backend=layout.PYTHON_BACKEND), onnx_path,
                         layout.ONNX_FILE)
    (py / layout.VERSION / layout.PYTHON_MODEL_FILE).write_text(python_model())
    return [main, py]


def write_tensorrt(out: Path, spec: ModelSpec, plan_path: Path) -> list[Path]:
    """``repository/`` (TensorRT backend)."""
    return [write_model_dir(out / layout.NATIVE_DIR, spec,
                            model_config(spec, platform=layout.TENSORRT_PLATFORM), plan_path,
                            layout.PLAN_FILE)]
