"""The repository names every writer and reader shares (``optimodel.triton.layout``)."""

from __future__ import annotations

from optimodel.triton import layout


def test_file_names_are_tritons_defaults():
    """Triton finds the engine by its platform's default file name; no config names it."""
    assert (layout.CONFIG_FILE, layout.VERSION, layout.WARMUP_DIR) == ("config.pbtxt", "1", "warmup")
    assert (layout.ONNX_FILE, layout.PLAN_FILE, layout.PYTHON_MODEL_FILE) == \
        ("model.onnx", "model.plan", "model.py")
    assert (layout.ONNXRUNTIME_PLATFORM, layout.TENSORRT_PLATFORM, layout.PYTHON_BACKEND) == \
        ("onnxruntime_onnx", "tensorrt_plan", "python")


def test_build_output_directories_per_layout():
    assert layout.LAYOUT_DIRS == {"native": "repository", "python": "repository-python"}
    assert layout.config_path("native", "m") == "repository/m/config.pbtxt"
    assert layout.config_path("python", "m") == "repository-python/m/config.pbtxt"
