"""Unit tests of the builder's pure parts: metrics, BF16 rounding, 2:4 masks, URIs,
calibration validation, the config protobuf and the termination-message budget."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from testcluster import need_module

from optimodel.api.report import BuildReport, BuildSummary, LatencyStats, PerformanceProfile
from optimodel.builder import benchmark, hardware, sources, verify
from optimodel.builder.errors import BuildError, classify


def test_cosine_takes_the_worst_sample():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    out = np.array([[1.0, 0.0], [1.0, 1.0]])
    assert verify.cosine_min(ref, out) == pytest.approx(math.sqrt(0.5))
    assert verify.cosine_min(ref, -ref) == pytest.approx(-1.0)
    assert verify.cosine_min(np.zeros((1, 3)), np.zeros((1, 3))) == 1.0
    assert verify.cosine_min(ref, np.full_like(ref, np.nan)) == -1.0


def test_max_abs_and_top1():
    ref = np.array([[0.1, 0.9], [0.8, 0.2]])
    assert verify.max_abs(ref, ref + 0.25) == pytest.approx(0.25)
    assert verify.max_abs(ref, ref * np.inf) == math.inf
    assert verify.top1_agreement(ref, np.array([[0.0, 1.0], [0.0, 1.0]])) == 0.5


def test_gate_direction_and_nan():
    assert verify.passes("cosine", 0.995, 0.99) and not verify.passes("cosine", 0.985, 0.99)
    assert verify.passes("max-abs", 0.01, 0.02) and not verify.passes("max-abs", 0.03, 0.02)
    assert not verify.passes("cosine", float("nan"), 0.0)


def test_compare_gates_on_every_served_output():
    ref = {"hidden": np.ones((4, 3)), "emb": np.eye(4)}
    good = verify.compare(ref, {"hidden": np.ones((4, 3)), "emb": np.eye(4)}, "cosine", 0.99)
    assert good.passed and good.value == pytest.approx(1.0) and good.samples == 4
    # A pooled output that agrees does not hide a per-token output that does not.
    bad = verify.compare(ref, {"hidden": -np.ones((4, 3)), "emb": np.eye(4)}, "cosine", 0.99)
    assert not bad.passed and bad.value == pytest.approx(-1.0)
    assert bad.per_output == pytest.approx({"hidden": -1.0, "emb": 1.0})
    missing = verify.compare(ref, {"emb": np.eye(4)}, "max-abs", 1.0)
    assert not missing.passed and missing.value == 1e30  # JSON-safe stand-in for infinity


def test_bf16_bits_match_torch_rounding():
    torch = need_module("torch")
    from optimodel.builder.compress import fp32_to_bf16_bits

    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32) * 100
    x[:3] = [np.nan, np.inf, -0.0]
    ours = fp32_to_bf16_bits(x)
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert (ours[1:] == theirs[1:]).all()
    assert ours[0] == 0x7FC0


def test_bf16_graph_is_typed_bf16_with_fp32_io(cnn, tmp_path):
    import onnx

    from optimodel.builder.compress import to_bf16

    out = to_bf16(cnn.onnx, tmp_path / "bf16.onnx")
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert {i.data_type for i in model.graph.initializer if i.dims} >= {onnx.TensorProto.BFLOAT16}
    assert onnx.TensorProto.FLOAT16 not in {i.data_type for i in model.graph.initializer}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_two_four_mask():
    torch = need_module("torch")
    from optimodel.builder.prune import mask_2_4

    w = torch.tensor([[4.0, -3.0, 1.0, 0.5, 0.1, 0.2, -0.3, 0.05]])
    assert mask_2_4(w).tolist() == [[True, True, False, False, False, True, True, False]]
    conv = torch.randn(8, 16, 3, 3)
    keep = mask_2_4(conv)
    assert (keep.movedim(1, -1).reshape(-1, 4).sum(dim=1) == 2).all()
    assert mask_2_4(torch.randn(4, 6)) is None


def test_uri_parsing(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTIMODEL_PVC_ROOT", "/mnt/claims")
    assert sources.parse("pvc://models/bert/v1").path == "/mnt/claims/models/bert/v1"
    assert sources.parse("file:///data/m.onnx").path == "/data/m.onnx"
    assert sources.parse("relative/m.onnx").path == str(Path.cwd() / "relative/m.onnx")
    assert sources.parse("s3://bucket/key").kind == "remote"
    hf = sources.parse("hf://org/name@abc123")
    assert (hf.kind, hf.path, hf.revision) == ("hf", "org/name", "abc123")
    for bad in ("ftp://x/y", "pvc://", "hf://justname"):
        with pytest.raises(BuildError) as err:
            sources.parse(bad)
        assert err.value.reason == "InvalidSpec"


def test_publish_replaces_atomically(tmp_path):
    staged = tmp_path / "stage"
    (staged / "repository").mkdir(parents=True)
    (staged / "report.json").write_text("{}")
    final = tmp_path / "out"
    final.mkdir()
    (final / "stale.txt").write_text("old")
    sources.publish(staged, str(final))
    assert sorted(p.name for p in final.iterdir()) == ["report.json", "repository"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_calibration_shape_errors_name_the_input():
    from optimodel.builder.loader import LoadedModel
    from optimodel.builder.samples import validate_tensors
    from optimodel.builder.tensors import TensorInfo

    model = LoadedModel(format="onnx", path=Path("/m"), inputs=[TensorInfo("pixels", "FP32", (-1, 3, 8, 8))],
                        outputs=[], baseline_runtime="onnxruntime-fp32")
    with pytest.raises(BuildError) as err:
        validate_tensors({"pixels": np.zeros((4, 8, 8, 3), np.float32)}, model, 10, "cal.npz")
    assert err.value.reason == "CalibrationFailed"
    assert "pixels" in err.value.message and "[4, 8, 8, 3]" in err.value.message
    assert "[N, 3, 8, 8]" in err.value.message
    ok = validate_tensors({"pixels": np.zeros((20, 3, 8, 8), np.float64)}, model, 10, "cal.npz")
    assert ok["pixels"].shape == (10, 3, 8, 8) and ok["pixels"].dtype == np.float32


def test_builtin_sentence_sets_are_disjoint():
    from optimodel.builder.samples import CALIBRATION_SENTENCES, HELD_OUT_SENTENCES, REPORT_SENTENCES

    sets = [set(HELD_OUT_SENTENCES), set(REPORT_SENTENCES), set(CALIBRATION_SENTENCES)]
    assert all(len(s) >= 32 for s in sets)
    assert len(set().union(*sets)) == sum(len(s) for s in sets)  # no sentence in two sets


@pytest.mark.parametrize(("n", "sizes"), [(3, (1, 1, 1)), (9, (7, 1, 1)), (40, (24, 8, 8)), (1000, (872, 64, 64))])
def test_user_data_splits_three_ways(n, sizes):
    from optimodel.builder.samples import split_sizes

    assert split_sizes(n) == sizes and sum(sizes) == n


def test_user_data_splits_never_overlap():
    from optimodel.builder.loader import LoadedModel
    from optimodel.builder.samples import evaluation_sets, split_sizes
    from optimodel.builder.tensors import TensorInfo

    model = LoadedModel(format="onnx", path=Path("/m"), inputs=[TensorInfo("x", "FP32", (-1, 1))], outputs=[],
                        baseline_runtime="onnxruntime-fp32")
    data = {"x": np.arange(40, dtype=np.float32).reshape(40, 1)}
    sets = evaluation_sets(model, data, from_user=True, quick=False)
    parts = [set(sets.calibration["x"].ravel()), set(sets.selection.feeds["x"].ravel()),
             set(sets.report.feeds["x"].ravel())]
    assert [len(p) for p in parts] == list(split_sizes(40))
    assert set().union(*parts) == set(range(40)) and sets.selection.source == sets.report.source == "uri"
    assert any("only 8" in w for w in sets.warnings)  # a thin set is said, not hidden
    with pytest.raises(BuildError) as err:
        evaluation_sets(model, {"x": data["x"][:2]}, from_user=True, quick=False)
    assert err.value.reason == "CalibrationFailed" and "at least 3" in err.value.message
    # Without user data: seeded random selection and report inputs that differ.
    synthetic = evaluation_sets(model, None, from_user=False, quick=True)
    assert not np.array_equal(synthetic.selection.feeds["x"], synthetic.report.feeds["x"])


def test_sweep_defaults_and_preferred_batch():
    assert benchmark.default_sweep(64) == [1, 8, 32]
    assert benchmark.default_sweep(4) == [1, 4]
    assert benchmark.headline_batch([1, 8, 32]) == 8 and benchmark.headline_batch([16, 32]) == 16

    def perf(points):
        sweep = [LatencyStats(batch_size=b, p50_ms=1, p99_ms=1, throughput=t, repeats=3) for b, t in points]
        return PerformanceProfile(runtime="x", device="cpu", sweep=sweep, headline=sweep[0])

    assert benchmark.preferred_batch_sizes(perf([(1, 50), (8, 95), (32, 100)])) == [8]
    assert benchmark.preferred_batch_sizes(perf([(1, 100), (8, 100)])) == []


def test_config_renders_through_the_protobuf_and_parses_back():
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from optimodel.builder.tensors import TensorInfo, warmup_samples
    from optimodel.triton.config import ModelSpec, model_config, render_config

    x = TensorInfo("x", "FP32", (-1, 3, 4))
    spec = ModelSpec(name="m", inputs=[x.triton()], outputs=[TensorInfo("y", "BF16", (-1, 2)).triton()],
                     max_batch_size=32, gpu=True, preferred_batch_sizes=[8, 64],
                     warmup=warmup_samples([x], {"x": np.zeros((1, 3, 4), np.float32)}))
    text = render_config(model_config(spec, platform="tensorrt_plan"))
    cfg = text_format.Parse(text, mc.ModelConfig())
    assert cfg.platform == "tensorrt_plan" and list(cfg.input[0].dims) == [3, 4]
    assert cfg.output[0].data_type == mc.TYPE_BF16
    assert list(cfg.dynamic_batching.preferred_batch_size) == [8]  # 64 > max_batch_size dropped
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert cfg.model_warmup[0].inputs["x"].input_data_file == "x"


def test_summary_fits_the_termination_message_even_with_a_huge_message():
    report = BuildReport(builder_version="0", build_key="k" * 64, succeeded=False, reason="ExportFailed",
                         message="x" * 10_000)
    text = BuildSummary.from_report(report).to_termination_message()
    assert len(text.encode()) <= 4096 and '"reason":"ExportFailed"' in text


def test_classify_recognises_out_of_memory():
    assert classify(MemoryError()).reason == "OutOfMemory"
    assert classify(RuntimeError("CUDA out of memory. Tried to allocate")).reason == "OutOfMemory"
    assert classify(ValueError("boom")).reason == "InternalError"
    with pytest.raises(ValueError):
        BuildError("NotAReason", "x")  # type: ignore[arg-type]


def test_text_calibration_file_is_tokenized(minilm_path, tmp_path):
    from transformers import AutoTokenizer

    from optimodel.builder.loader import LoadedModel
    from optimodel.builder.samples import load_calibration
    from optimodel.builder.tensors import TensorInfo

    names = ["input_ids", "token_type_ids", "attention_mask"]
    model = LoadedModel(format="huggingface", path=minilm_path, inputs=[TensorInfo(n, "INT64", (-1, -1)) for n in names],
                        outputs=[], baseline_runtime="pytorch-eager-fp32",
                        tokenizer=AutoTokenizer.from_pretrained(str(minilm_path)), seq_len=32)
    text = tmp_path / "cal.txt"
    text.write_text("First sample sentence.\n\nSecond one, a little longer than the first.\nThird.\n")
    feeds = load_calibration(str(text), tmp_path / "dl", model, samples=2)
    assert set(feeds) == set(names)
    assert feeds["input_ids"].shape == (2, 32) and feeds["input_ids"].dtype == np.int64
    assert feeds["attention_mask"][0].sum() < 32  # padded to the sequence length, mask marks it


def test_safetensors_calibration(tmp_path):
    from safetensors.numpy import save_file

    from optimodel.builder.loader import LoadedModel
    from optimodel.builder.samples import load_calibration
    from optimodel.builder.tensors import TensorInfo

    model = LoadedModel(format="onnx", path=tmp_path, inputs=[TensorInfo("x", "FP32", (-1, 4))], outputs=[],
                        baseline_runtime="onnxruntime-fp32")
    save_file({"x": np.ones((10, 4), np.float32)}, str(tmp_path / "cal.safetensors"))
    assert load_calibration(str(tmp_path / "cal.safetensors"), tmp_path, model, 512)["x"].shape == (10, 4)
    with pytest.raises(BuildError) as err:
        load_calibration(str(tmp_path / "missing.npz"), tmp_path, model, 512)
    assert err.value.reason == "CalibrationFailed"


def test_hf_uri_resolves_through_the_local_cache(tmp_path, monkeypatch):
    """hf://org/name is read from the HF cache layout (refs/main -> snapshots/<commit>/)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--example-org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = sources.fetch("hf://example-org/tiny", tmp_path / "dl")
    assert path == snapshot and (path / "config.json").is_file()


def test_access_denial_tells_refused_credentials_from_missing_objects():
    """s3fs turns botocore errors into PermissionError / FileNotFoundError with the ClientError as
    the cause: credential refusals are AccessDenied material, missing objects are not."""
    from botocore.exceptions import ClientError, NoCredentialsError
    from s3fs.errors import translate_boto_error

    from optimodel.builder.errors import access_denial

    def store_error(code: str, status: int) -> BaseException:
        error = ClientError({"Error": {"Code": code, "Message": "server text"},
                             "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
        return translate_boto_error(error)

    assert access_denial(store_error("SignatureDoesNotMatch", 403)) == "SignatureDoesNotMatch"
    assert access_denial(store_error("InvalidAccessKeyId", 403)) == "InvalidAccessKeyId"
    assert access_denial(store_error("AccessDenied", 403)) == "AccessDenied"
    assert access_denial(store_error("403", 403)) == "HTTP 403"  # HEAD: no body, no code
    assert access_denial(NoCredentialsError()) == "no credentials"
    for code, status in (("NoSuchKey", 404), ("NoSuchBucket", 404), ("404", 404), ("SlowDown", 503)):
        assert access_denial(store_error(code, status)) is None, code
    assert access_denial(PermissionError(13, "Permission denied", "/local/file")) is None
    assert access_denial(ValueError("boom")) is None


@pytest.mark.parametrize("cpu_max,quota,period,cores", [
    ("max 100000", None, None, None),          # cgroup v2, no limit
    ("250000 100000", None, None, 2.5),        # a pod limited to 2500m
    ("50000 100000", None, None, 0.5),
    (None, "-1", "100000", None),              # cgroup v1, no limit
    (None, "400000", "100000", 4.0),
    (None, None, None, None),                  # no cgroup files (not Linux, or unmounted)
    ("garbage", None, None, None),
])
def test_cgroup_cpu_quota(cpu_max, quota, period, cores):
    assert hardware.cgroup_cpu_quota(cpu_max, quota, period) == cores


def test_cpu_threads_respects_the_quota(monkeypatch):
    """A CPU limit below the visible CPUs caps the threads; rounding down, never below one."""
    monkeypatch.delenv(hardware.THREADS_ENV, raising=False)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(64)))
    files = {hardware.CGROUP2_CPU_MAX: "250000 100000"}
    monkeypatch.setattr(hardware, "_read", files.get)
    assert hardware.cpu_threads() == 2
    files[hardware.CGROUP2_CPU_MAX] = "50000 100000"
    assert hardware.cpu_threads() == 1
    files[hardware.CGROUP2_CPU_MAX] = "max 100000"
    assert hardware.cpu_threads() == 64
    monkeypatch.setenv(hardware.THREADS_ENV, "3")
    assert hardware.cpu_threads() == 3


def test_per_token_outputs_are_compared_on_real_tokens_only():
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
    ref = np.ones((2, 4, 3))
    out = ref.copy()
    out[:, 2:] = -1.0  # padding positions disagree completely: they must not count
    assert verify.compare({"h": ref}, {"h": out}, "cosine", 0.99, mask).passed
    assert verify.compare({"h": ref}, {"h": out}, "max-abs", 0.0, mask).value == 0.0
    assert not verify.compare({"h": ref}, {"h": out}, "cosine", 0.99).passed  # without the mask: counted
    out[0, 1] = -1.0  # a real token disagreeing still fails the gate
    assert verify.compare({"h": ref}, {"h": out}, "cosine", 0.99, mask).value == pytest.approx(0.0)
    logits = np.zeros((2, 4, 3))
    logits[..., 0] = 1.0
    flipped = logits.copy()
    flipped[:, 2:] = logits[:, 2:, ::-1]  # argmax differs on padding only
    assert verify.compare({"l": logits}, {"l": flipped}, "top1-agreement", 1.0, mask).value == 1.0
    # Pooled outputs ([N, H]) ignore the mask.
    pooled = verify.compare({"e": np.eye(2)}, {"e": np.eye(2)}, "cosine", 0.99, mask)
    assert pooled.value == pytest.approx(1.0)


def test_fp8_qdq_graph_from_modelopt(cnn, tmp_path):
    """The FP8 candidate's graph, built by ModelOpt on CPU: FP8 (E4M3) Q/DQ pairs a TensorRT
    engine can run. ONNX Runtime has no FP8 kernels, so what the GPU does with it is untested here."""
    need_module("modelopt.onnx.quantization", "nvidia-modelopt (extra: fp8)")
    import onnx

    from optimodel.builder.compress import quantize_fp8

    calibration = {"input": np.random.default_rng(3).standard_normal((16, 3, 32, 32)).astype(np.float32)}
    graph = onnx.load(str(quantize_fp8(cnn.onnx, tmp_path / "fp8.onnx", calibration)))
    onnx.checker.check_model(graph)
    dequantized = {o for n in graph.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    fed_fp8 = [n.name for n in graph.graph.node if n.op_type == "Conv" and set(n.input) & dequantized]
    assert fed_fp8, "no convolution reads an FP8-dequantized tensor"
    zero_points = {i.data_type for i in graph.graph.initializer if i.name.endswith("zero_point")}
    assert zero_points == {onnx.TensorProto.FLOAT8E4M3FN}
