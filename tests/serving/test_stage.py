"""``stage-repository``: serving settings applied through the protobuf, repositories copied.

Pure ``apply_serving`` cases are compared field by field with exact expectations; the copy is
exercised from every source form (path, file://, pvc://, an fsspec URL) without a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from testcluster import need_module

need_module("tritonclient.grpc.model_config_pb2", "tritonclient")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2 as mc  # noqa: E402

from optimodel.api.spec import Serving  # noqa: E402
from optimodel.serving.cli import stage_main  # noqa: E402
from optimodel.triton.config import parse_config  # noqa: E402
from optimodel.triton.overrides import apply_serving  # noqa: E402
from optimodel.triton.stage import StageError, stage_repository  # noqa: E402

BUILT = """
name: "minilm-build"
platform: "onnxruntime_onnx"
max_batch_size: 64
input { name: "input_ids" data_type: TYPE_INT64 dims: [-1] }
output { name: "embedding" data_type: TYPE_FP32 dims: [384] }
instance_group { count: 1 kind: KIND_GPU }
dynamic_batching { preferred_batch_size: [4, 64] max_queue_delay_microseconds: 100 }
model_warmup { name: "sample" batch_size: 1 inputs { key: "input_ids" value {
  data_type: TYPE_INT64 dims: [8] input_data_file: "input_ids" } } }
"""


def built() -> mc.ModelConfig:
    return text_format.Parse(BUILT, mc.ModelConfig())


def serving(**wire) -> Serving:
    return Serving.model_validate(wire)


def expected(**changes) -> mc.ModelConfig:
    """The built config with the fields serving owns replaced."""
    cfg = built()
    cfg.ClearField("dynamic_batching")
    cfg.ClearField("instance_group")
    text_format.Parse(changes.pop("text", ""), cfg)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def test_defaults_native_one_gpu_instance_and_dynamic_batching():
    """No preferred sizes in the spec: the ones the builder measured and wrote stay."""
    got = apply_serving(built(), Serving())
    want = expected(text="instance_group { count: 1 kind: KIND_GPU gpus: [0] } "
                         "dynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: [4, 64] }")
    assert got == want


def test_an_empty_preferred_list_in_the_spec_clears_the_measured_one():
    got = apply_serving(built(), serving(dynamicBatching={"preferredBatchSizes": []}))
    assert list(got.dynamic_batching.preferred_batch_size) == []


def test_an_engine_measured_on_cpu_keeps_cpu_instances_on_a_gpu_pod():
    """An ONNX Runtime engine the builder measured on CPU: staging must not hand it to the CUDA
    execution provider it was never built or measured with, even when the pod has GPUs."""
    cfg = built()
    cfg.instance_group[0].kind = mc.ModelInstanceGroup.KIND_CPU
    got = apply_serving(cfg, serving(gpu={"count": 2}, instancesPerGpu=3))
    assert got == expected(text="instance_group { count: 6 kind: KIND_CPU } "
                                "dynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: [4, 64] }")


def test_instances_per_gpu_times_gpus_native():
    got = apply_serving(built(), serving(
        gpu={"count": 2}, instancesPerGpu=3,
        dynamicBatching={"maxQueueDelayMicroseconds": 2500, "preferredBatchSizes": [16, 8]}))
    # Triton's instance count is per listed GPU: 3 on each of GPUs 0 and 1 = 6 instances.
    want = expected(text="instance_group { count: 3 kind: KIND_GPU gpus: [0, 1] } "
                         "dynamic_batching { max_queue_delay_microseconds: 2500 "
                         "preferred_batch_size: [8, 16] }")
    assert got == want


def test_python_layout_runs_cpu_instances():
    got = apply_serving(built(), serving(gpu={"count": 2}, instancesPerGpu=3), layout="python")
    want = expected(text="instance_group { count: 6 kind: KIND_CPU } "
                         "dynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: [4, 64] }")
    assert got == want


@pytest.mark.parametrize("layout", ["native", "python"])
def test_a_model_served_on_cpu_gets_cpu_instances_in_either_layout(layout):
    """gpu.count 0: the engine was built and measured on CPU, so it never asks Triton for a GPU."""
    got = apply_serving(built(), serving(gpu={"count": 0}, instancesPerGpu=2), layout=layout)
    assert got == expected(text="instance_group { count: 2 kind: KIND_CPU } "
                                "dynamic_batching { max_queue_delay_microseconds: 100 preferred_batch_size: [4, 64] }")


def test_dynamic_batching_off_removes_the_batcher():
    got = apply_serving(built(), serving(dynamicBatching={"enabled": False}))
    assert not got.HasField("dynamic_batching")
    assert got == expected(text="instance_group { count: 1 kind: KIND_GPU gpus: [0] }")


def test_enabled_without_settings_still_renders_the_batcher():
    got = apply_serving(built(), serving(dynamicBatching={"maxQueueDelayMicroseconds": 0, "preferredBatchSizes": []}))
    assert got.HasField("dynamic_batching")
    assert "dynamic_batching {\n}" in text_format.MessageToString(got)


def test_model_without_batch_dimension_gets_no_batcher():
    cfg = built()
    cfg.max_batch_size = 0
    assert not apply_serving(cfg, Serving()).HasField("dynamic_batching")


def test_rename_and_engine_fields_untouched_and_input_not_mutated():
    cfg = built()
    before = cfg.SerializeToString()
    got = apply_serving(cfg, Serving(), model_name="minilm")
    assert cfg.SerializeToString() == before
    assert got.name == "minilm"
    assert (got.platform, got.max_batch_size, list(got.input), list(got.output),
            list(got.model_warmup)) == (cfg.platform, 64, list(cfg.input), list(cfg.output),
                                        list(cfg.model_warmup))


def test_preferred_batch_size_above_engine_max_is_refused():
    with pytest.raises(ValueError, match=r"\[128\] exceed the engine's max_batch_size 64"):
        apply_serving(built(), serving(dynamicBatching={"preferredBatchSizes": [8, 128]}))


# --------------------------------------------------------------------------------------------
# Copying
# --------------------------------------------------------------------------------------------


def write_model(model_dir: Path, name: str, platform: str = "onnxruntime_onnx") -> Path:
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(b"onnx-bytes")
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "input_ids").write_bytes(b"\x00" * 64)
    cfg = built()
    cfg.name = name
    if platform == "python":
        cfg.ClearField("platform")
        cfg.backend = "python"
        (model_dir / "1" / "model.py").write_text("# model\n")
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    return model_dir


@pytest.fixture
def build_output(tmp_path: Path) -> Path:
    out = tmp_path / "artifacts" / "ml" / "minilm" / "0123456789abcdef"
    write_model(out / "repository" / "minilm-0123456789", "minilm-0123456789")
    write_model(out / "repository-python" / "minilm-0123456789", "minilm-0123456789", "python")
    (out / "report.json").write_text("{}")
    return out


def staged_config(dest: Path, name: str) -> mc.ModelConfig:
    return parse_config((dest / name / "config.pbtxt").read_text())


@pytest.mark.parametrize("layout", ["native", "python"])
def test_stages_a_build_output_per_layout_and_renames(build_output, tmp_path, layout):
    dest = tmp_path / "models"
    path = stage_repository(str(build_output), dest, "minilm",
                            serving(instancesPerGpu=2), layout=layout)
    assert path == dest / "minilm"
    cfg = staged_config(dest, "minilm")
    assert cfg.name == "minilm"
    if layout == "native":
        assert cfg.platform == "onnxruntime_onnx"
        assert (cfg.instance_group[0].kind, cfg.instance_group[0].count) == (mc.ModelInstanceGroup.KIND_GPU, 2)
    else:
        assert cfg.backend == "python" and (path / "1" / "model.py").is_file()
        assert (cfg.instance_group[0].kind, cfg.instance_group[0].count) == (mc.ModelInstanceGroup.KIND_CPU, 2)
    assert (path / "1" / "model.onnx").read_bytes() == b"onnx-bytes"
    assert (path / "warmup" / "input_ids").stat().st_size == 64
    assert sorted(p.name for p in dest.iterdir()) == ["minilm"]  # no staging leftovers


def test_sources_file_uri_repository_and_model_dir(build_output, tmp_path):
    repo = build_output / "repository"
    stage_repository(f"file://{repo}", tmp_path / "a", "m")
    stage_repository(str(repo / "minilm-0123456789"), tmp_path / "b", "m")
    assert staged_config(tmp_path / "a", "m") == staged_config(tmp_path / "b", "m")


def test_a_killed_earlier_run_leaves_nothing_for_triton_to_trip_on(build_output, tmp_path):
    """Triton loads every folder of its repository (model-control-mode none) and exits on a load
    error, so half-copied work of an init container killed mid-copy must not survive a re-run."""
    dest = tmp_path / "models"
    leftover = dest / ".stage-killed" / "minilm"
    leftover.mkdir(parents=True)
    (leftover / "config.pbtxt").write_text("half a file")
    stage_repository(str(build_output), dest, "minilm")
    assert sorted(p.name for p in dest.iterdir()) == ["minilm"]


def test_pvc_uri_resolves_under_the_pvc_root(build_output, tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIMODEL_PVC_ROOT", str(tmp_path / "artifacts"))
    stage_repository("pvc://ml/minilm/0123456789abcdef", tmp_path / "models", "minilm")
    assert staged_config(tmp_path / "models", "minilm").name == "minilm"
    with pytest.raises(StageError, match="does not exist"):
        stage_repository("pvc://ml/nope", tmp_path / "models", "minilm")


def test_fsspec_source(build_output, tmp_path):
    fsspec = need_module("fsspec")
    fs = fsspec.filesystem("memory")
    for path in build_output.rglob("*"):
        if path.is_file():
            fs.pipe(f"/bucket/build/{path.relative_to(build_output)}", path.read_bytes())
    try:
        dest = stage_repository("memory://bucket/build", tmp_path / "models", "minilm",
                                layout="python")
        assert staged_config(tmp_path / "models", "minilm").backend == "python"
        assert (dest / "1" / "model.onnx").read_bytes() == b"onnx-bytes"
        assert (dest / "warmup" / "input_ids").stat().st_size == 64
    finally:
        fs.rm("/bucket", recursive=True)


def test_rerun_replaces_the_previous_copy(build_output, tmp_path):
    dest = tmp_path / "models"
    stage_repository(str(build_output), dest, "minilm", serving(instancesPerGpu=1))
    (dest / "minilm" / "stale").write_text("x")
    stage_repository(str(build_output), dest, "minilm", serving(instancesPerGpu=4))
    assert staged_config(dest, "minilm").instance_group[0].count == 4
    assert not (dest / "minilm" / "stale").exists()


@pytest.mark.parametrize("layout", ["native", "python"])
def test_the_measured_preferred_batch_size_survives_staging(tmp_path, layout):
    """The builder's writer and the stager, end to end: the preferred batch size the builder
    measured and wrote is what Triton gets, unless the spec names its own."""
    from optimodel.triton.config import ModelSpec, Tensor, WarmupSample
    from optimodel.triton.repository import write_onnxruntime

    engine = tmp_path / "engine.onnx"
    engine.write_bytes(b"onnx-bytes")
    spec = ModelSpec(name="minilm-build", inputs=[Tensor("input_ids", "INT64", (-1,))],
                     outputs=[Tensor("embedding", "FP32", (384,))], max_batch_size=64, gpu=False,
                     preferred_batch_sizes=[16], warmup={"input_ids": WarmupSample((8,), b"\0" * 64)})
    out = tmp_path / "out"
    write_onnxruntime(out, spec, engine)
    (out / "report.json").write_text("{}")

    stage_repository(str(out), tmp_path / "a", "minilm", Serving(), layout=layout)
    assert list(staged_config(tmp_path / "a", "minilm").dynamic_batching.preferred_batch_size) == [16]
    stage_repository(str(out), tmp_path / "b", "minilm",
                     serving(dynamicBatching={"preferredBatchSizes": [4, 32]}), layout=layout)
    assert list(staged_config(tmp_path / "b", "minilm").dynamic_batching.preferred_batch_size) == [4, 32]


def test_errors_are_clear(build_output, tmp_path):
    (build_output / "repository-python").rename(build_output / "elsewhere")
    with pytest.raises(StageError, match="no repository-python/"):
        stage_repository(str(build_output), tmp_path / "m", "minilm", layout="python")
    with pytest.raises(StageError, match="does not exist"):
        stage_repository(str(tmp_path / "missing"), tmp_path / "m", "minilm")


def test_cli(build_output, tmp_path, capsys):
    dest = tmp_path / "models"
    spec = {"gpu": {"count": 2}, "instancesPerGpu": 2,
            "dynamicBatching": {"maxQueueDelayMicroseconds": 300, "preferredBatchSizes": [8]}}
    rc = stage_main(["--from", str(build_output), "--to", str(dest), "--model-name", "minilm",
                     "--serving-json", json.dumps(spec)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"model": "minilm", "path": str(dest / "minilm"), "layout": "native",
                       "dynamicBatching": "on (max_queue_delay_us=300, preferred=[8])",
                       "instances": 4, "kind": "KIND_GPU"}
    assert stage_main(["--from", str(build_output), "--to", str(dest), "--model-name", "m",
                       "--serving-json", '{"instancesPerGpu": 0}']) == 2
    assert "invalid --serving-json" in capsys.readouterr().err
    assert stage_main(["--from", str(tmp_path / "nope"), "--to", str(dest), "--model-name", "m"]) == 1
