"""Where models come from and where artifacts go: one fsspec-based layer for every URI scheme.

Schemes: plain local paths and ``file://`` (local runs, tests), ``pvc://claim/path`` (a claim
mounted at ``$OPTIMODEL_PVC_ROOT``, default ``/mnt/pvc``), ``https://`` and ``s3://`` (fsspec;
s3fs reads credentials from the environment, which the Job fills from ``credentialsSecret``),
and ``hf://org/name[@revision]`` (resolved through the local Hugging Face cache only: builders
run without internet egress, so a model must be pre-seeded).

A remote store that refuses the credentials (S3 AccessDenied, InvalidAccessKeyId,
SignatureDoesNotMatch, HTTP 401/403) is ``AccessDenied``, whether reading a source or writing the
output, with a message naming the URI and the Secret the credentials came from (never a value);
only a true "not there" (404, NoSuchKey, NoSuchBucket) is ``ModelNotFound``.

Publishing is atomic: the whole output is staged locally, then moved into place with a rename
(local, pvc) or uploaded only after the build succeeded, ``report.json`` last (object stores), so
a reader that sees a report sees a complete repository.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from optimodel import artifacts, storage
from optimodel.api.spec import URI_DOT_DOT_SEGMENT, BuildSpec
from optimodel.builder.errors import BuildError, access_denial

log = logging.getLogger("optimodel.builder")

REMOTE_TIMEOUT_S = 60.0

# Where the credentials came from, for AccessDenied messages: the Job exposes the keys of the
# model's credentialsSecret as the standard AWS variables, and those of the artifact Secret with
# the OPTIMODEL_ARTIFACT_ prefix (optimodel.storage.ARTIFACT_ENV_PREFIX); each is used for its own
# side only.
SOURCE_CREDENTIALS = ("the builder's standard AWS environment (the keys of the Secret named by "
                      "spec.model.credentialsSecret; never the artifact credentials)")
OUTPUT_CREDENTIALS = ("the artifact credentials (the keys of the Secret named by the chart's "
                      "artifacts.credentialsSecret, in the model's namespace)")

Kind = Literal["local", "remote", "hf"]


@dataclass(frozen=True)
class Location:
    """A parsed URI: a local filesystem path, a remote fsspec URL, or a Hugging Face repo id."""

    uri: str
    kind: Kind
    path: str  # local path, fsspec URL, or "org/name"
    revision: str | None = None

    @property
    def local_path(self) -> Path:
        assert self.kind == "local", self
        return Path(self.path)


def parse(uri: str) -> Location:
    """Map a URI to a location; unknown schemes are a spec error."""
    if "://" not in uri:
        return Location(uri, "local", os.path.abspath(os.path.expanduser(uri)))
    scheme, rest = uri.split("://", 1)
    scheme = scheme.lower()
    if scheme == "file":
        return Location(uri, "local", "/" + rest.lstrip("/") if rest else "/")
    if scheme == "pvc":
        try:
            return Location(uri, "local", str(storage.pvc_path(uri)))
        except ValueError as exc:
            raise BuildError("InvalidSpec", str(exc)) from exc
    if scheme in ("s3", "https", "http"):
        return Location(uri, "remote", uri)
    if scheme == "hf":
        repo, _, revision = rest.strip("/").partition("@")
        if repo.count("/") != 1:
            raise BuildError("InvalidSpec", f"{uri}: hf:// URIs are hf://org/name[@revision]")
        return Location(uri, "hf", repo, revision or None)
    raise BuildError("InvalidSpec", f"{uri}: unsupported URI scheme {scheme!r} "
                     "(use a local path, file://, pvc://, https://, s3:// or hf://)")


# --------------------------------------------------------------------------- source policy

ALLOWED_PREFIXES_ENV = "OPTIMODEL_ALLOWED_SOURCE_PREFIXES"
"""Comma-separated URI prefixes every model and calibration source must start with (the chart's
``sourcePolicy.allowedPrefixes``, which the API server enforces too); unset or empty = any."""


def allowed_prefixes() -> list[str]:
    """The source prefixes the builder allows (``$OPTIMODEL_ALLOWED_SOURCE_PREFIXES``); [] = any."""
    return [p.strip() for p in os.environ.get(ALLOWED_PREFIXES_ENV, "").split(",") if p.strip()]


def check_source(uri: str, field: str, prefixes: list[str] | None = None) -> None:
    """Refuse (``InvalidSpec``) a source URI outside the allowed prefixes, or one with ``..``
    segments (which would climb out of a claim or an allowed prefix once resolved).

    ``field`` names the spec field in the message (e.g. ``spec.model.uri``). The URI itself is
    left out of the message: it ends up in the termination message and the report.
    """
    prefixes = allowed_prefixes() if prefixes is None else prefixes
    if "://" in uri and re.search(URI_DOT_DOT_SEGMENT, uri):
        raise BuildError("InvalidSpec", f"{field} must not contain '..' path segments: a source "
                         "stays inside its bucket, claim or allowed prefix")
    if prefixes and not any(uri.startswith(p) for p in prefixes):
        raise BuildError("InvalidSpec", f"{field} is not an allowed source: it must start with one "
                         f"of {', '.join(prefixes)} (the source policy, {ALLOWED_PREFIXES_ENV})")


def check_source_policy(spec: BuildSpec) -> None:
    """Check the model and calibration URIs of ``spec`` (``check_source``), before any download."""
    prefixes = allowed_prefixes()
    check_source(spec.model.uri, "spec.model.uri", prefixes)
    calibration = spec.optimization.calibration
    if calibration is not None and calibration.uri:
        check_source(calibration.uri, "spec.optimization.calibration.uri", prefixes)


def _filesystem(url: str, *, artifacts: bool = False):
    """An fsspec filesystem for a remote URL, with timeouts so a dead host fails fast.

    ``artifacts``: the URL is in the artifact store (the output), opened with the artifact
    credentials; otherwise it is a source, opened with the model's.
    """
    import fsspec

    protocol = url.split("://", 1)[0].lower()
    options: dict = {}
    if protocol in ("http", "https"):
        import aiohttp

        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, connect=15, sock_read=REMOTE_TIMEOUT_S)}
    elif protocol == "s3":
        options.update(storage.s3_options(artifacts=artifacts))
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def model_credentials(secret: str | None) -> str:
    """Where a model source's credentials come from, for an ``AccessDenied`` message."""
    if secret:
        return f"the keys of Secret {secret!r} (spec.model.credentialsSecret)"
    return ("no spec.model.credentialsSecret is set, so none but the builder's ambient identity "
            "(the artifact credentials are never used for sources)")


def denied(uri: str, what: str, code: str, credentials: str, *, write: bool = False) -> BuildError:
    """The ``AccessDenied`` failure for a store that refused the credentials (no secret values)."""
    verb = "write" if write else "read"
    refused = ("found no credentials to use" if code == "no credentials"
               else f"refused the credentials ({code})")
    return BuildError("AccessDenied", f"access denied: cannot {verb} {what} at {uri}: the store "
                      f"{refused}; credentials used: {credentials}. Check that they are valid and "
                      f"grant {verb} access to this location.")


def fetch(uri: str, dest: Path, *, what: str = "model", missing: str = "ModelNotFound",
          credentials: str = SOURCE_CREDENTIALS) -> Path:
    """Make ``uri`` available as a local path (a file or a directory) and return it.

    Local and pvc locations are used in place (no copy); remote ones are downloaded into
    ``dest``. A store refusing the credentials is ``AccessDenied`` (``credentials`` says where
    they came from); anything else that prevents reading the source is ``missing`` (by default
    ModelNotFound), with the underlying error in the message.
    """
    loc = parse(uri)
    if loc.kind == "local":
        path = loc.local_path
        if not path.exists():
            raise BuildError(missing, f"{what} not found: {uri} (no such file or directory: {path})")
        return path
    if loc.kind == "hf":
        return _fetch_hf(loc, missing, what)
    try:
        fs, path = _filesystem(loc.path)
        dest.mkdir(parents=True, exist_ok=True)
        if fs.isdir(path):
            target = dest / (Path(path.rstrip("/")).name or "model")
            fs.get(path.rstrip("/") + "/", str(target), recursive=True)
        else:
            target = dest / (Path(path).name or "model")
            fs.get(path, str(target))
    except BuildError:
        raise
    except Exception as exc:  # network, 404: both mean "cannot read the source"
        code = access_denial(exc)
        if code:
            raise denied(uri, what, code, credentials) from exc
        raise BuildError(missing, f"cannot fetch {what} from {uri}: {type(exc).__name__}: {exc}") from exc
    if not target.exists():
        raise BuildError(missing, f"cannot fetch {what} from {uri}: nothing was downloaded")
    log.info("fetched %s %s -> %s", what, uri, target)
    return target


def _fetch_hf(loc: Location, missing: str, what: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(loc.path, revision=loc.revision, local_files_only=True))
    except Exception as exc:
        raise BuildError(missing, f"{what} {loc.uri} is not in the local Hugging Face cache and the "
                         f"builder does not download from the Hub (offline): {type(exc).__name__}: "
                         f"{exc}. Pre-seed the cache (HF_HOME) or use s3://, pvc:// or https://.") from exc


# --------------------------------------------------------------------------- output side


def read_report(output_uri: str) -> dict | None:
    """The ``report.json`` already at the output location, or None (absent or unreadable)."""
    loc = parse(output_uri)
    try:
        if loc.kind == "local":
            path = loc.local_path / "report.json"
            return json.loads(path.read_text()) if path.is_file() else None
        if loc.kind != "remote":
            return None
        fs, path = _filesystem(loc.path, artifacts=True)
        report_path = path.rstrip("/") + "/report.json"
        if not fs.exists(report_path):
            return None
        with fs.open(report_path, "rb") as fh:
            return json.loads(fh.read())
    except Exception as exc:
        code = access_denial(exc)
        if code:  # the build goes on; publishing with the same credentials will say AccessDenied
            log.warning("could not check %s for an existing build: access denied (%s)", output_uri, code)
        else:
            log.warning("could not read an existing report at %s: %s", output_uri, exc)
        return None


def exists(output_uri: str, relative: str) -> bool:
    """Whether ``relative`` exists under the output location (used by the cache check)."""
    loc = parse(output_uri)
    try:
        if loc.kind == "local":
            return (loc.local_path / relative).exists()
        fs, path = _filesystem(loc.path, artifacts=True)
        return fs.exists(path.rstrip("/") + "/" + relative)
    except Exception:
        return False


def check_artifact_scope(output_uri: str, scope: str | None) -> None:
    """Refuse to build when the output or the artifact credential reaches beyond ``scope``.

    ``scope`` (``--artifact-scope``, ``<root>/<namespace>/``) is what the operator allows this
    build: the output must lie inside it (``InvalidSpec`` otherwise), and for ``s3://`` the
    artifact credential must not be able to list its parent, where the other namespaces' folders
    are (``CredentialsTooBroad``; see ``optimodel.artifacts``). Runs before the cache check, so a
    store-wide credential never gets to read anything. ``None``: no scope (a local run, or an
    installation that opted into one shared credential).
    """
    if scope is None:
        return
    try:
        artifacts.enforce_scope(output_uri, scope, lambda uri: _filesystem(uri, artifacts=True)[0])
    except artifacts.OutsideScope as exc:
        raise BuildError("InvalidSpec", f"--output {exc}") from exc
    except artifacts.CredentialTooBroad as exc:
        raise BuildError("CredentialsTooBroad", str(exc)) from exc
    except Exception as exc:
        code = access_denial(exc)
        if code:
            raise denied(scope, "the artifact store", code, OUTPUT_CREDENTIALS) from exc
        raise BuildError("OutputWriteFailed", f"cannot check the artifact credential's scope at "
                         f"{scope}: {type(exc).__name__}: {exc}") from exc
    log.info("artifact credential is limited to %s (it may not list the folders beside it)", scope)


def publish(staged: Path, output_uri: str) -> None:
    """Move a fully staged output directory to ``output_uri`` without ever exposing half of it."""
    loc = parse(output_uri)
    if loc.kind == "hf":
        raise BuildError("InvalidSpec", f"{output_uri}: hf:// is not a writable output location")
    try:
        if loc.kind == "local":
            _publish_local(staged, loc.local_path)
        else:
            _publish_remote(staged, loc.path)
    except BuildError:
        raise
    except Exception as exc:
        code = access_denial(exc) if loc.kind == "remote" else None
        if code:
            raise denied(output_uri, "the build output", code, OUTPUT_CREDENTIALS, write=True) from exc
        raise BuildError("OutputWriteFailed", f"cannot write the output to {output_uri}: "
                         f"{type(exc).__name__}: {exc}") from exc


def _publish_local(staged: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    incoming = final.parent / f".{final.name}.incoming-{token}"
    shutil.copytree(staged, incoming)  # may cross filesystems; the rename below may not
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{token}"
        os.rename(final, old)
    try:
        os.rename(incoming, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _publish_remote(staged: Path, url: str) -> None:
    fs, root = _filesystem(url, artifacts=True)
    root = root.rstrip("/")
    files = sorted(p for p in staged.rglob("*") if p.is_file())
    # report.json last: its presence is what marks the output as complete.
    files.sort(key=lambda p: p.name == "report.json" and p.parent == staged)
    for path in files:
        rel = path.relative_to(staged).as_posix()
        fs.put_file(str(path), f"{root}/{rel}")
    log.info("uploaded %d files to %s", len(files), url)
