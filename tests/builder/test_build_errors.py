"""Bad input fails with the documented reason and exit code, a summary on the termination
path, and nothing at the output location."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optimodel.api.report import EXIT_CODES


def assert_failed(result, reason: str) -> dict:
    assert result.code == EXIT_CODES[reason], result.summary
    assert result.summary["succeeded"] is False
    assert result.summary["reason"] == reason
    assert result.summary["message"]
    assert not result.output.exists(), "a failed build must write nothing at the output"
    assert len(result.termination.read_bytes()) <= 4096
    return result.summary


def onnx_spec(uri, **optimization):
    return {"model": {"uri": str(uri), "format": "onnx"}, "optimization": {"maxBatchSize": 8, **optimization}}


def test_missing_file_is_model_not_found(build, tmp_path):
    summary = assert_failed(build(onnx_spec(tmp_path / "nope.onnx")), "ModelNotFound")
    assert "nope.onnx" in summary["message"]


def test_unreachable_uri_is_model_not_found(build):
    summary = assert_failed(build(onnx_spec("https://127.0.0.1:9/nothing.onnx")), "ModelNotFound")
    assert "127.0.0.1:9" in summary["message"]


@pytest.fixture
def http_store():
    """A real HTTP server on 127.0.0.1: /private/* answers 403, /login/* 401, anything else 404."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            status = 403 if self.path.startswith("/private/") else 401 if self.path.startswith("/login/") else 404
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="models"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _answer

        def log_message(self, *args):  # keep pytest output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("path, status", [("private/model.onnx", 403), ("login/model.onnx", 401)])
def test_refused_http_source_is_access_denied(build, http_store, path, status):
    uri = f"{http_store}/{path}"
    spec = {"model": {"uri": uri, "format": "onnx", "credentialsSecret": "model-creds"}}
    summary = assert_failed(build(spec), "AccessDenied")
    assert uri in summary["message"] and f"HTTP {status}" in summary["message"]
    assert "model-creds" in summary["message"]  # where the refused credentials came from


def test_missing_http_source_is_still_model_not_found(build, http_store):
    summary = assert_failed(build(onnx_spec(f"{http_store}/public/model.onnx")), "ModelNotFound")
    assert "/public/model.onnx" in summary["message"]


def test_build_key_mismatch_is_refused_before_any_work(build, tmp_path):
    """Operator and builder of different releases compute different keys: refuse, naming both."""
    from optimodel.api.key import BUILDER_VERSION, build_key
    from optimodel.api.spec import BuildSpec

    spec = onnx_spec(tmp_path / "absent.onnx")  # would be ModelNotFound if the build went on
    computed = build_key(BuildSpec.model_validate(spec))
    asked = "0123456789ab" + "f" * 52
    result = build(spec, "--build-key", asked)
    summary = assert_failed(result, "BuildKeyMismatch")
    assert result.code == 20
    assert summary["buildKey"] == asked  # the operator matches the summary to its Job by this key
    message = summary["message"]
    assert asked[:12] in message and computed[:12] in message and BUILDER_VERSION in message
    assert "version skew" in message


def test_matching_build_key_proceeds(build, tmp_path):
    from optimodel.api.key import build_key
    from optimodel.api.spec import BuildSpec

    spec = onnx_spec(tmp_path / "absent.onnx")
    key = build_key(BuildSpec.model_validate(spec))
    summary = assert_failed(build(spec, "--build-key", key), "ModelNotFound")  # got past the check
    assert summary["buildKey"] == key


def test_malformed_build_key_is_invalid_spec(build, tmp_path):
    summary = assert_failed(build(onnx_spec(tmp_path / "absent.onnx"), "--build-key", "not-a-key"), "InvalidSpec")
    assert "--build-key" in summary["message"]


def test_hf_uri_not_in_the_cache_is_model_not_found(build, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    spec = {"model": {"uri": "hf://example-org/not-cached", "format": "huggingface"}}
    summary = assert_failed(build(spec), "ModelNotFound")
    assert "Hugging Face cache" in summary["message"]


def test_corrupt_onnx_is_model_load_failed(build, tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is definitely not an ONNX protobuf \x00\x01\x02" * 10)
    summary = assert_failed(build(onnx_spec(bad)), "ModelLoadFailed")
    assert "corrupt.onnx" in summary["message"]


def test_unknown_format_is_invalid_spec(build, cnn):
    spec = {"model": {"uri": str(cnn.onnx), "format": "keras"}}
    summary = assert_failed(build(spec), "InvalidSpec")
    assert "format" in summary["message"]


def test_torchscript_without_inputs_is_invalid_spec(build, cnn):
    spec = {"model": {"uri": str(cnn.torchscript), "format": "torchscript"}}
    summary = assert_failed(build(spec), "InvalidSpec")
    assert "model.inputs" in summary["message"]


def test_wrong_format_for_the_file_is_model_load_failed(build, cnn):
    spec = {"model": {"uri": str(cnn.onnx), "format": "torchscript", "inputs": cnn.inputs}}
    assert_failed(build(spec), "ModelLoadFailed")


def test_custom_domain_operator_is_unsupported_model(build, custom_op_onnx):
    summary = assert_failed(build(onnx_spec(custom_op_onnx)), "UnsupportedModel")
    assert "FancyOp" in summary["message"]


def test_int8_without_calibration_is_invalid_spec(build, cnn):
    assert_failed(build(onnx_spec(cnn.onnx, precision="int8")), "InvalidSpec")


def test_wrong_shaped_calibration_is_calibration_failed(build, cnn, tmp_path):
    cal = tmp_path / "cal.npz"
    np.savez(cal, input=np.zeros((16, 3, 28, 28), np.float32))
    spec = onnx_spec(cnn.onnx, precision="int8", calibration={"uri": str(cal)})
    summary = assert_failed(build(spec), "CalibrationFailed")
    assert "input" in summary["message"]
    assert "[16, 3, 28, 28]" in summary["message"] and "[N, 3, 32, 32]" in summary["message"]


def test_calibration_missing_an_input_is_calibration_failed(build, cnn, tmp_path):
    cal = tmp_path / "cal.npz"
    np.savez(cal, pixels=np.zeros((16, 3, 32, 32), np.float32))
    spec = onnx_spec(cnn.onnx, precision="int8", calibration={"uri": str(cal)})
    summary = assert_failed(build(spec), "CalibrationFailed")
    assert "no tensor for input input" in summary["message"]


def test_batch_sizes_above_max_batch_are_invalid(build, cnn):
    assert_failed(build(onnx_spec(cnn.onnx), "--batch-sizes", "1,64"), "InvalidSpec")


def test_bad_spec_json_is_invalid_spec(tmp_path):
    from optimodel.cli import main

    term = tmp_path / "term"
    code = main(["build", "--spec-json", "{not json", "--output", str(tmp_path / "out"),
                 "--termination-message-path", str(term)])
    assert code == EXIT_CODES["InvalidSpec"]
    assert json.loads(term.read_text())["reason"] == "InvalidSpec"
    assert not (tmp_path / "out").exists()


def test_console_script_reports_model_not_found(console, tmp_path):
    """The real ``optimodel build`` process: exit code, stdout summary and termination file."""
    term = tmp_path / "term"
    spec = onnx_spec(tmp_path / "missing.onnx")
    proc = console(["--spec-json", json.dumps(spec), "--output", str(tmp_path / "out"),
                    "--termination-message-path", str(term)], cwd=tmp_path)
    assert proc.returncode == EXIT_CODES["ModelNotFound"], proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["reason"] == "ModelNotFound"
    assert json.loads(term.read_text())["reason"] == "ModelNotFound"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_python_module_entry_point_builds(console, cnn, tmp_path):
    """``python -m optimodel.builder`` runs the same CLI (here: a full CNN build)."""
    spec = onnx_spec(cnn.onnx, precision="fp32")
    proc = console(["--spec-json", json.dumps(spec), "--output", str(tmp_path / "out"),
                    "--termination-message-path", "", "--quick", "--batch-sizes", "1"],
                   cwd=tmp_path, module=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["succeeded"] is True
    assert (tmp_path / "out/repository/model/config.pbtxt").is_file()


def test_spec_file_yaml(build, tmp_path):
    from optimodel.cli import main

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"model:\n  uri: {tmp_path / 'absent.onnx'}\n  format: onnx\noptimization:\n  precision: fp32\n")
    term = tmp_path / "term"
    code = main(["build", "--spec-file", str(spec_file), "--output", str(tmp_path / "out"),
                 "--termination-message-path", str(term)])
    assert code == EXIT_CODES["ModelNotFound"]  # parsed, then failed on the missing model
    assert json.loads(term.read_text())["reason"] == "ModelNotFound"


@pytest.mark.slow
def test_sigterm_still_writes_a_summary_and_nothing_else(minilm_path, tmp_path):
    """Job deletion sends SIGTERM: the builder reports it and leaves no output behind."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = Path(sys.executable).parent / "optimodel"
    term = tmp_path / "term"
    spec = {"model": {"uri": str(minilm_path), "format": "huggingface"}}
    proc = subprocess.Popen([str(script), "build", "--spec-json", json.dumps(spec), "--output", str(tmp_path / "out"),
                             "--termination-message-path", str(term), "--quick"],
                            cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1"))
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # wait until real work is under way
        if "step load: started" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == EXIT_CODES["Terminated"] == 143  # 128 + SIGTERM, as a shell reports it
    summary = json.loads(term.read_text())
    assert summary["reason"] == "Terminated" and "SIGTERM" in summary["message"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_unwritable_output_is_output_write_failed(build, cnn, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = build(onnx_spec(cnn.onnx, precision="fp32"), "--quick", "--batch-sizes", "1",
                   output=blocker / "out")
    assert result.code == EXIT_CODES["OutputWriteFailed"]
    assert result.summary["reason"] == "OutputWriteFailed"
    assert blocker.read_text() == "not a directory"
