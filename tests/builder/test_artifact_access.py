"""Per-namespace artifact access against a real MinIO and its policy engine.

Each namespace's artifact credential is a session credential minted with the policy
``optimodel artifact-policy`` prints (``ObjectStore.scoped_env``). The builder and the stager get
it the way a pod does (the artifact Secret through ``envFrom.prefix``: ``OPTIMODEL_ARTIFACT_AWS_*``)
and the scope the operator passes (``--artifact-scope <root>/<namespace>/``). What must hold:

- namespace A's builder writes under ``<root>/A/`` and stages from there;
- A's credential can neither write nor read B's prefix: refused by the store itself, not only
  by our lexical check;
- the artifact credential is never used to read a model source;
- a store-wide credential is refused (CredentialsTooBroad) unless sharing was opted into.
"""

from __future__ import annotations

import pytest

from optimodel.api.report import EXIT_CODES
from optimodel.api.spec import Serving
from optimodel.triton.stage import StageError, stage_repository
from optimodel.storage import ARTIFACT_ENV_PREFIX

pytestmark = pytest.mark.slow

BUCKET = "tenants"
ROOT = f"s3://{BUCKET}/optimodel"
SCOPE_A, SCOPE_B = f"{ROOT}/team-a/", f"{ROOT}/team-b/"
SPEC = {"optimization": {"precision": "fp32", "target": "onnxruntime", "maxBatchSize": 4}}
STANDARD = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
            "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")


@pytest.fixture(scope="module")
def tenants(object_store, cnn):
    """The bucket, B's engine already built (by root), and A's and B's scoped credentials."""
    fs = object_store.fs()
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    fs.put(str(cnn.onnx), f"{BUCKET}/optimodel/team-b/sources/cnn.onnx")
    fs.put(str(cnn.onnx), f"{BUCKET}/sources/cnn.onnx")
    return {"fs": fs, "a": object_store.scoped_env(SCOPE_A), "b": object_store.scoped_env(SCOPE_B),
            "a-read": object_store.scoped_env(SCOPE_A, write=False)}


@pytest.fixture
def as_artifact_credential(monkeypatch):
    """Put a credential where a pod's artifact Secret puts it; no standard AWS variable is left
    (a pod without spec.model.credentialsSecret has none), and no metadata service is asked."""
    def use(env: dict[str, str]) -> None:
        for name in STANDARD:
            monkeypatch.delenv(name, raising=False)
            monkeypatch.delenv(ARTIFACT_ENV_PREFIX + name, raising=False)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        for name, value in env.items():
            monkeypatch.setenv(ARTIFACT_ENV_PREFIX + name, value)
    return use


def test_namespace_builds_and_stages_inside_its_own_prefix(build, cnn, tenants, as_artifact_credential, tmp_path):
    as_artifact_credential(tenants["a"])
    out = f"{SCOPE_A}cnn/k1"
    result = build({**SPEC, "model": {"uri": str(cnn.onnx), "format": "onnx"}}, "--quick",
                   "--batch-sizes", "1", "--model-name", "cnn", "--artifact-scope", SCOPE_A, output=out)
    assert result.code == 0, result.summary
    assert tenants["fs"].exists(f"{BUCKET}/optimodel/team-a/cnn/k1/report.json")

    as_artifact_credential(tenants["a-read"])  # a staging-only credential is enough to stage
    model_dir = stage_repository(f"{out}/repository", tmp_path / "models", "cnn", Serving(), scope=SCOPE_A)
    assert (model_dir / "1" / "model.onnx").stat().st_size > 0


def test_a_cannot_write_b_prefix(build, cnn, tenants, as_artifact_credential):
    """The store refuses A's credential on B's prefix even without our scope check (no
    --artifact-scope), and with it the builder refuses before doing any work."""
    as_artifact_credential(tenants["a"])
    spec = {**SPEC, "model": {"uri": str(cnn.onnx), "format": "onnx"}}
    into_b = f"{SCOPE_B}cnn/stolen"
    result = build(spec, "--quick", "--batch-sizes", "1", output=into_b, name="unchecked")
    assert result.code == EXIT_CODES["AccessDenied"], result.summary
    assert "AccessDenied" in result.summary["message"] and "write" in result.summary["message"]
    result = build(spec, "--artifact-scope", SCOPE_A, output=into_b, name="checked")
    assert result.code == EXIT_CODES["InvalidSpec"] and "outside --artifact-scope" in result.summary["message"]
    assert not tenants["fs"].exists(f"{BUCKET}/optimodel/team-b/cnn/stolen")


def test_a_cannot_read_b_prefix(tenants, as_artifact_credential, tmp_path):
    as_artifact_credential(tenants["a"])
    with pytest.raises(PermissionError):  # the store's refusal, without our scope check
        stage_repository(f"{SCOPE_B}sources", tmp_path / "unchecked", "cnn", Serving())
    with pytest.raises(StageError, match="outside --artifact-scope"):
        stage_repository(f"{SCOPE_B}sources", tmp_path / "checked", "cnn", Serving(), scope=SCOPE_A)


def test_artifact_credential_never_reads_sources(build, tenants, as_artifact_credential):
    """A model author points spec.model.uri into B's prefix, giving no credentialsSecret: the
    builder has only A's artifact credential, which it never uses for sources, so it reads with
    none. Even B's own credential as A's artifact Secret would not be used to read it."""
    as_artifact_credential(tenants["b"])
    spec = {**SPEC, "model": {"uri": f"{SCOPE_B}sources/cnn.onnx", "format": "onnx"}}
    result = build(spec, "--quick", "--batch-sizes", "1", output=f"{SCOPE_B}cnn/via-source")
    assert result.code == EXIT_CODES["AccessDenied"], result.summary
    assert "no credentials" in result.summary["message"]
    assert "the artifact credentials are never used for sources" in result.summary["message"]


def test_store_wide_credential_is_refused_unless_shared(build, cnn, tenants, object_store,
                                                        as_artifact_credential, tmp_path):
    as_artifact_credential(object_store.env)  # the root user: every namespace's folder
    spec = {**SPEC, "model": {"uri": str(cnn.onnx), "format": "onnx"}}
    out = f"{SCOPE_A}cnn/broad"
    result = build(spec, "--quick", "--batch-sizes", "1", "--artifact-scope", SCOPE_A, output=out, name="scoped")
    assert result.code == EXIT_CODES["CredentialsTooBroad"] == 21, result.summary
    message = result.summary["message"]
    assert f"may list {ROOT}/" in message and "artifacts.sharedCredentials" in message
    assert f"optimodel artifact-policy {SCOPE_A}" in message
    assert not tenants["fs"].exists(f"{BUCKET}/optimodel/team-a/cnn/broad")
    with pytest.raises(StageError, match="CredentialsTooBroad"):
        stage_repository(f"{SCOPE_A}cnn/k1/repository", tmp_path / "m", "cnn", Serving(), scope=SCOPE_A)

    shared = build(spec, "--quick", "--batch-sizes", "1", output=out, name="shared")  # no scope: opted in
    assert shared.code == 0, shared.summary
    assert tenants["fs"].exists(f"{BUCKET}/optimodel/team-a/cnn/broad/report.json")


def test_model_credentials_read_sources_beside_the_artifact_credential(build, tenants, as_artifact_credential,
                                                                       object_store, monkeypatch):
    """Both Secrets at once, as in a builder pod with spec.model.credentialsSecret: the model's
    standard AWS keys read the source, the prefixed artifact keys write the output, and neither
    shadows the other (with plain envFrom, the later Secret's AWS_ACCESS_KEY_ID won)."""
    as_artifact_credential(tenants["a"])
    for name, value in object_store.env.items():  # the model Secret: may read sources/
        monkeypatch.setenv(name, value)
    spec = {**SPEC, "model": {"uri": f"s3://{BUCKET}/sources/cnn.onnx", "format": "onnx",
                              "credentialsSecret": "model-store"}}
    out = f"{SCOPE_A}cnn/both"
    result = build(spec, "--quick", "--batch-sizes", "1", "--artifact-scope", SCOPE_A, output=out)
    assert result.code == 0, result.summary
    assert tenants["fs"].exists(f"{BUCKET}/optimodel/team-a/cnn/both/report.json")
