"""The builder's own source checks (the API server checks first; the builder checks again):
allowed source prefixes from ``$OPTIMODEL_ALLOWED_SOURCE_PREFIXES`` and pvc:// paths that must
stay inside ``<root>/<claim>/``. Everything goes through the real resolution functions and the
real ``optimodel build`` entry point; no download is attempted for a refused source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimodel import storage
from optimodel.api.report import EXIT_CODES
from optimodel.api.spec import BuildSpec
from optimodel.builder import cli, sources
from optimodel.builder.errors import BuildError
from optimodel.triton.stage import StageError, local_path

PREFIXES = "s3://models/, hf://my-org/"


def spec(model_uri: str, calibration_uri: str | None = None) -> BuildSpec:
    data: dict = {"model": {"uri": model_uri, "format": "onnx"}}
    if calibration_uri:
        data["optimization"] = {"precision": "int8", "calibration": {"uri": calibration_uri}}
    return BuildSpec.model_validate(data)


# --- pvc:// resolution ------------------------------------------------------------------------

@pytest.mark.parametrize("uri", [
    "pvc://claim/../../x", "pvc://claim/..", "pvc://claim/a/../../other-claim/m.onnx",
    "pvc://claim/./../x", "pvc://../x", "pvc://./x", "pvc://claim//../x",
], ids=["up-two", "claim-parent", "sibling-claim", "dot-then-up", "dot-dot-claim", "dot-claim",
        "double-slash"])
def test_pvc_paths_that_leave_the_claim_are_refused(monkeypatch, tmp_path, uri):
    monkeypatch.setenv("OPTIMODEL_PVC_ROOT", str(tmp_path / "pvc"))
    with pytest.raises(ValueError, match="claim"):
        storage.pvc_path(uri)
    with pytest.raises(BuildError) as err:  # the builder: model and calibration sources, outputs
        sources.parse(uri)
    assert err.value.reason == "InvalidSpec" and uri in err.value.message
    with pytest.raises(StageError):  # the Triton pods' repository stager
        local_path(uri)


def test_pvc_paths_are_normalized_inside_the_claim(monkeypatch):
    monkeypatch.setenv("OPTIMODEL_PVC_ROOT", "/mnt/claims")
    assert storage.pvc_path("pvc://models/bert/v1") == Path("/mnt/claims/models/bert/v1")
    assert storage.pvc_path("pvc://models//bert/./v1/") == Path("/mnt/claims/models/bert/v1")
    assert storage.pvc_path("pvc://models/bert/old/../v1") == Path("/mnt/claims/models/bert/v1")
    assert storage.pvc_path("pvc://models/") == Path("/mnt/claims/models")
    assert storage.pvc_path("pvc://models/a/..") == Path("/mnt/claims/models")
    assert sources.parse("pvc://models/x/../m.onnx").path == "/mnt/claims/models/m.onnx"
    # A file literally named "..x" or "%2e%2e" is a name, not a parent reference.
    assert storage.pvc_path("pvc://models/..x") == Path("/mnt/claims/models/..x")
    assert storage.pvc_path("pvc://models/%2e%2e/x") == Path("/mnt/claims/models/%2e%2e/x")


def test_a_pvc_traversal_never_reaches_a_file_outside_the_claim(monkeypatch, tmp_path):
    """The escape is real on disk (the target exists) and still refused: it is never read."""
    root = tmp_path / "pvc"
    (root / "claim").mkdir(parents=True)
    (tmp_path / "secret.onnx").write_bytes(b"not yours")
    monkeypatch.setenv("OPTIMODEL_PVC_ROOT", str(root))
    with pytest.raises(BuildError) as err:
        sources.fetch("pvc://claim/../../secret.onnx", tmp_path / "dest")
    assert err.value.reason == "InvalidSpec"
    assert not (tmp_path / "dest").exists()


# --- allowed source prefixes ------------------------------------------------------------------

def test_no_prefixes_allow_every_source(monkeypatch):
    monkeypatch.delenv(sources.ALLOWED_PREFIXES_ENV, raising=False)
    assert sources.allowed_prefixes() == []
    sources.check_source_policy(spec("s3://anything/m.onnx", "https://host/calib.npz"))
    monkeypatch.setenv(sources.ALLOWED_PREFIXES_ENV, " , ")
    assert sources.allowed_prefixes() == []
    sources.check_source_policy(spec("/local/m.onnx"))


def test_allowed_prefixes_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv(sources.ALLOWED_PREFIXES_ENV, PREFIXES)
    assert sources.allowed_prefixes() == ["s3://models/", "hf://my-org/"]
    sources.check_source_policy(spec("s3://models/minilm/model.onnx", "hf://my-org/calib@v1"))
    sources.check_source_policy(spec("hf://my-org/bert"))


@pytest.mark.parametrize("model,calibration,field", [
    ("s3://other/m.onnx", None, "spec.model.uri"),
    ("s3://models-evil/m.onnx", None, "spec.model.uri"),  # a prefix match is a string match
    ("hf://other-org/bert", None, "spec.model.uri"),
    ("/local/m.onnx", None, "spec.model.uri"),
    ("file:///data/m.onnx", None, "spec.model.uri"),
    ("s3://models/m.onnx", "https://host/calib.npz", "spec.optimization.calibration.uri"),
    ("s3://models/m.onnx", "s3://other/calib.npz", "spec.optimization.calibration.uri"),
], ids=["other-bucket", "bucket-name-prefix", "other-org", "local-path", "file-uri",
        "calibration-https", "calibration-other-bucket"])
def test_sources_outside_the_prefixes_are_refused(monkeypatch, model, calibration, field):
    monkeypatch.setenv(sources.ALLOWED_PREFIXES_ENV, PREFIXES)
    with pytest.raises(BuildError) as err:
        sources.check_source_policy(spec(model, calibration))
    assert err.value.reason == "InvalidSpec"
    assert field in err.value.message
    assert "s3://models/, hf://my-org/" in err.value.message
    assert sources.ALLOWED_PREFIXES_ENV in err.value.message


@pytest.mark.parametrize("uri", [
    "s3://models/../other/m.onnx", "https://host/models/../admin", "hf://my-org/../x",
    "pvc://claim/a/../b", "s3://models/%2e%2e/x", "s3://models/.%2E/x", "https://host/a/..?x=1",
])
def test_dot_dot_segments_are_refused(monkeypatch, uri):
    """``..`` would climb out of an allowed prefix once a client normalizes the path; refused
    with or without a prefix list (the CRD refuses them at apply too)."""
    for prefixes in ("", "s3://models/,https://host/models/,hf://my-org/,pvc://claim/"):
        monkeypatch.setenv(sources.ALLOWED_PREFIXES_ENV, prefixes)
        with pytest.raises(BuildError) as err:
            sources.check_source_policy(spec(uri))
        assert err.value.reason == "InvalidSpec" and "spec.model.uri" in err.value.message
        assert "'..'" in err.value.message


def test_the_build_cli_refuses_before_any_download(monkeypatch, tmp_path):
    """Through ``optimodel build``: exit code and termination message of InvalidSpec, nothing
    read (the model file exists and would build), nothing written at --output."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"would be read if the policy let it")
    monkeypatch.setenv(sources.ALLOWED_PREFIXES_ENV, PREFIXES)
    fetched = []
    monkeypatch.setattr(sources, "fetch", lambda *a, **k: fetched.append(a))
    termination = tmp_path / "termination"
    output = tmp_path / "out"
    code = cli.main(["--spec-json", json.dumps({"model": {"uri": str(model), "format": "onnx"}}),
                     "--output", str(output), "--termination-message-path", str(termination),
                     "--work-dir", str(tmp_path / "work")])
    assert code == EXIT_CODES["InvalidSpec"]
    summary = json.loads(termination.read_text())
    assert summary["reason"] == "InvalidSpec"
    assert "spec.model.uri is not an allowed source" in summary["message"]
    assert "s3://models/, hf://my-org/" in summary["message"]
    assert not fetched and not output.exists()


def test_the_pipeline_checks_too(monkeypatch, tmp_path):
    """A caller of the pipeline that skips the CLI still gets the check, as the first step."""
    from optimodel.builder.pipeline import Build, BuildOptions

    monkeypatch.setenv(sources.ALLOWED_PREFIXES_ENV, PREFIXES)
    fetched = []
    monkeypatch.setattr(sources, "fetch", lambda *a, **k: fetched.append(a))
    build = Build(BuildOptions(spec=spec("s3://models/m.onnx", "s3://elsewhere/calib.npz"),
                               output=str(tmp_path / "out"), work_dir=tmp_path, key="0" * 64, threads=1))
    with pytest.raises(BuildError) as err:
        build.run()
    assert err.value.reason == "InvalidSpec"
    assert "spec.optimization.calibration.uri" in err.value.message
    assert not fetched
