"""Stage a built model repository for a Triton pod, with the serving settings applied.

Why a separate step: the builder's output depends only on the build key (model + optimization),
so editing ``spec.serving`` must never rebuild. The Triton pod's init container runs
``optimodel stage-repository``: it copies the engine's repository from artifact storage into the
pod's model-repository volume and rewrites ``config.pbtxt`` -- through Triton's ``ModelConfig``
protobuf, never as text -- with the current serving settings (dynamic batching, instance count;
``optimodel.triton.overrides``).

Sources (``--from``):

- a local path or ``file://path``;
- ``pvc://<claim>/<path>``: the claim mounted at ``$OPTIMODEL_PVC_ROOT/<claim>`` (default root
  ``/mnt/pvc``), which is how the operator mounts artifact PVCs;
- ``s3://bucket/prefix`` (fsspec + s3fs; the artifact credentials: the artifact Secret's keys as
  ``OPTIMODEL_ARTIFACT_AWS_*`` in a pod, else the standard AWS environment variables; see
  ``optimodel.storage.s3_options``);
- any other fsspec URL (``memory://`` is what the tests use).

A source may be a build output directory (``report.json``, ``repository/``,
``repository-python/``), a model repository (``<name>/config.pbtxt``) or a model directory
(``config.pbtxt``); ``--layout`` picks ``repository/`` (native: ONNX Runtime / TensorRT backend)
or ``repository-python/`` (Python backend, for Tritons without the ONNX Runtime backend).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from optimodel import artifacts, storage
from optimodel.api.spec import Serving
from optimodel.triton.config import ProtobufUnavailable, parse_config, render_config
from optimodel.triton.layout import CONFIG_FILE, LAYOUT_DIRS, Layout
from optimodel.triton.overrides import apply_serving


class StageError(RuntimeError):
    """The source repository could not be found, read, or its config could not be applied."""


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def local_path(uri: str) -> Path | None:
    """The local filesystem path a URI names, or ``None`` for a remote (fsspec) URI."""
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if uri.startswith("pvc://"):
        try:
            return storage.pvc_path(uri)
        except ValueError as exc:
            raise StageError(str(exc)) from exc
    if "://" not in uri:
        return Path(uri)
    return None


def _filesystem(uri: str):
    try:
        import fsspec
    except ImportError as exc:  # pragma: no cover - depends on the image
        raise StageError(f"{uri}: remote sources need fsspec (and s3fs for s3://)") from exc
    options = storage.s3_options(artifacts=True) if uri.startswith("s3://") else {}
    fs, root = fsspec.core.url_to_fs(uri, **options)
    return fs, root.rstrip("/")


def _pick_model_dir(exists, join, root: str, model_name: str, layout: Layout) -> tuple[str, bool]:
    """``(path, is_model_dir)``: the model directory, or the repository to take the one model of.

    Looks in ``<root>/<layout dir>/`` (a build output) first, then in ``<root>`` itself, for
    ``<model_name>/config.pbtxt`` or ``config.pbtxt``.
    """
    layout_root = join(root, LAYOUT_DIRS[layout])
    if not exists(layout_root) and exists(join(root, "report.json")):
        raise StageError(f"the build output at {root} has no {LAYOUT_DIRS[layout]}/ "
                         f"(no {layout} layout for this engine)")
    candidates = [layout_root, root] if exists(layout_root) else [root]
    for base in candidates:
        if exists(join(base, model_name, CONFIG_FILE)):
            return join(base, model_name), True
        if exists(join(base, CONFIG_FILE)):
            return base, True
    return candidates[0], False


def fetch_model_dir(uri: str, model_name: str, layout: Layout, workdir: Path) -> Path:
    """A local directory holding the model (config.pbtxt, versions, warmup), fetched if remote.

    When the source is a repository holding exactly one model under another name (a build
    output names its model after the build), that model is taken and renamed later.
    """
    path = local_path(uri)
    if path is not None:
        if not path.exists():
            raise StageError(f"{uri}: {path} does not exist")
        return _resolve_local(path, model_name, layout)
    fs, root = _filesystem(uri)
    if not fs.exists(root):
        raise StageError(f"{uri}: not found")

    def join(*parts: str) -> str:
        return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))

    base, is_model = _pick_model_dir(fs.exists, join, root, model_name, layout)
    if not is_model:
        models = [p for p in fs.ls(base, detail=False) if fs.exists(join(p, CONFIG_FILE))]
        if len(models) != 1:
            raise StageError(f"{uri}: expected exactly one model under {base}, found {len(models)}")
        base = models[0]
    local = workdir / "fetched"
    fs.get(base.rstrip("/") + "/", str(local) + "/", recursive=True)
    return local


def _resolve_local(path: Path, model_name: str, layout: Layout) -> Path:
    base, is_model = _pick_model_dir(lambda p: Path(p).exists(), os.path.join, str(path),
                                     model_name, layout)
    if is_model:
        return Path(base)
    models = [p for p in sorted(Path(base).iterdir()) if (p / CONFIG_FILE).is_file()]
    if len(models) != 1:
        raise StageError(f"{path}: expected exactly one model under {base}, found {len(models)}")
    return models[0]


# --------------------------------------------------------------------------------------------
# The whole step
# --------------------------------------------------------------------------------------------


def check_scope(uri: str, scope: str | None) -> None:
    """Refuse a source outside ``scope`` (``<root>/<namespace>/``), and an ``s3://`` artifact
    credential that may list beyond it (see ``optimodel.artifacts``). ``None``: no scope."""
    if scope is None:
        return
    try:
        artifacts.enforce_scope(uri, scope, lambda u: _filesystem(u)[0])
    except artifacts.OutsideScope as exc:
        raise StageError(str(exc)) from exc
    except artifacts.CredentialTooBroad as exc:
        raise StageError(f"CredentialsTooBroad: {exc}") from exc


def stage_repository(uri: str, dest: str | os.PathLike[str], model_name: str,
                     serving: Serving | None = None, layout: Layout = "native",
                     scope: str | None = None) -> Path:
    """Copy the model from ``uri`` to ``dest/<model_name>/`` and apply ``serving`` to its config.

    Re-running (an init container restarts) replaces the previous copy; the new one is written
    next to it and renamed into place, so Triton never sees a half-copied model. Work folders a
    killed earlier run left behind are removed first: Triton runs with
    ``--model-control-mode=none`` and loads every folder of the repository, so a leftover would
    stop it (``--exit-on-error``). ``scope``: see ``check_scope``, which runs before anything is
    read.
    """
    if layout not in LAYOUT_DIRS:
        raise StageError(f"unknown layout {layout!r} (native or python)")
    check_scope(uri, scope)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for leftover in dest.glob(".stage-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=".stage-", dir=dest) as tmp:
        work = Path(tmp)
        source = fetch_model_dir(uri, model_name, layout, work)
        staged = work / model_name
        if source.resolve() != staged.resolve():
            shutil.copytree(source, staged, symlinks=False)
        config_path = staged / CONFIG_FILE
        try:
            config = parse_config(config_path.read_text())
        except ProtobufUnavailable as exc:
            raise StageError(str(exc)) from exc
        except Exception as exc:  # text_format.ParseError and friends
            raise StageError(f"{uri}: {CONFIG_FILE} does not parse as a Triton ModelConfig: {exc}") from exc
        try:
            config = apply_serving(config, serving or Serving(), layout=layout, model_name=model_name)
        except ValueError as exc:
            raise StageError(str(exc)) from exc
        config_path.write_text(render_config(config))
        final = dest / model_name
        old = work / ".previous"
        if final.exists():
            final.rename(old)
        staged.rename(final)
    return final
