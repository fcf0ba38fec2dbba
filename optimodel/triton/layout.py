"""The names of a Triton model repository and of a build output: defined once, here.

A build output (what ``optimodel build`` publishes, what ``stage-repository`` reads)::

    <output>/repository/<name>/config.pbtxt          platform onnxruntime_onnx or tensorrt_plan
    <output>/repository/<name>/1/model.onnx | model.plan
    <output>/repository/<name>/warmup/<input>        one real sample per input (raw bytes)
    <output>/repository-python/<name>/config.pbtxt   backend "python" (ONNX Runtime engines only)
    <output>/repository-python/<name>/1/model.py     runs ONNX Runtime on 1/model.onnx
    <output>/repository-python/<name>/1/model.onnx
    <output>/repository-python/<name>/warmup/<input>

``repository/`` is the *native* layout (Triton's ONNX Runtime or TensorRT backend);
``repository-python/`` the *python* layout, for Tritons without the ONNX Runtime backend (the
pytriton wheel bundles only the Python backend). The file names in the version directory are
Triton's defaults for each platform (``default_model_filename``), so no config names them.

Standard library only: the operator image (and its stager) imports this.
"""

from __future__ import annotations

from typing import Literal

CONFIG_FILE = "config.pbtxt"
"""A model directory's config: a ``ModelConfig`` protobuf in text format."""

VERSION = "1"
"""The one version directory a model has (Triton's ``version`` label on its metrics, too)."""

WARMUP_DIR = "warmup"
"""The model directory's folder of warmup samples, one file per input (``input_data_file``)."""

ONNXRUNTIME_PLATFORM = "onnxruntime_onnx"
TENSORRT_PLATFORM = "tensorrt_plan"
PYTHON_BACKEND = "python"

ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
PYTHON_MODEL_FILE = "model.py"

Layout = Literal["native", "python"]
LAYOUT_DIRS: dict[str, str] = {"native": "repository", "python": "repository-python"}
"""The repository directory of each layout in a build output."""
NATIVE_DIR = LAYOUT_DIRS["native"]
PYTHON_DIR = LAYOUT_DIRS["python"]


def config_path(layout: Layout, model_name: str) -> str:
    """``<layout dir>/<model_name>/config.pbtxt``: a model's config, relative to a build output."""
    return f"{LAYOUT_DIRS[layout]}/{model_name}/{CONFIG_FILE}"
