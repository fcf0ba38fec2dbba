"""Which engines a Triton image can load: the TensorRT version check, as a table."""

from __future__ import annotations

import pytest

from optimodel.operator.compatibility import tensorrt_mismatch
from optimodel.operator.settings import OperatorSettings

IMAGE = "nvcr.io/nvidia/tritonserver:25.01-py3"


@pytest.mark.parametrize(("platform", "built", "serving", "refused"), [
    ("tensorrt_plan", "tensorrt 10.8.0.43", "10.8.0.43", False),
    ("tensorrt_plan", "10.8.0", "10.8.0.43", False),  # the build number is not part of compatibility
    ("tensorrt_plan", "tensorrt 10.9.0.34", "10.8.0.43", True),  # minor differs
    ("tensorrt_plan", "tensorrt 10.8.1.2", "10.8.0.43", True),  # patch differs
    ("tensorrt_plan", "tensorrt 11.0.0", "10.8", True),
    ("tensorrt_plan", "tensorrt ?", "10.8.0.43", True),  # a plan of unknown TensorRT is not rolled out
    ("tensorrt_plan", "tensorrt 10.9.0", None, False),  # no check configured
    ("onnxruntime_onnx", "onnxruntime 1.23.2", "10.8.0.43", False),  # not a TensorRT plan
])
def test_tensorrt_mismatch(platform, built, serving, refused):
    problem = tensorrt_mismatch(platform, built, serving, IMAGE)
    assert (problem is not None) == refused
    if refused:
        assert IMAGE in problem and "triton.tensorrtVersion" in problem or "no TensorRT version" in problem


def test_the_message_names_both_versions_and_the_way_out():
    problem = tensorrt_mismatch("tensorrt_plan", "tensorrt 10.9.0.34", "10.8.0.43", IMAGE)
    assert "built with TensorRT 10.9.0.34" in problem and "runs TensorRT 10.8.0.43" in problem
    assert "same NGC release" in problem


def test_the_setting_defaults_to_the_default_images_tensorrt_and_empty_turns_it_off():
    assert OperatorSettings.from_env({}).triton_tensorrt_version == "10.8.0.43"
    assert OperatorSettings.from_env({"OPTIMODEL_TRITON_TENSORRT_VERSION": ""}).triton_tensorrt_version is None
    assert OperatorSettings.from_env({"OPTIMODEL_TRITON_TENSORRT_VERSION": "10.9.0"}).triton_tensorrt_version == "10.9.0"
