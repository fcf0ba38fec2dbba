"""``optimodel build``: the builder Job's entry point (also ``python -m optimodel.builder``).

Contract with the operator (DESIGN section 5): arguments are a list, the spec arrives as
``--spec-json`` (the ``BuildSpec`` wire form, camelCase), the exit code and the termination
message say how it went. Every failure, including a bad command line, produces a
``BuildSummary`` with a reason from ``EXIT_CODES`` and exits with that reason's code; nothing
is written at ``--output`` unless the build succeeded.

The operator passes the build key it computed (and named the Job after) as ``--build-key``; the
builder computes the key itself from the spec and its own version and refuses to build under a
key it disagrees with (``BuildKeyMismatch``: operator and builder images from different releases).
SIGTERM (Job deleted, pod evicted or preempted) is ``Terminated``, exit 143 (128 + SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import tempfile
import time
from pathlib import Path

from optimodel.api.key import BUILDER_VERSION, build_key
from optimodel.api.report import EXIT_CODES, BuildReport, BuildSummary
from optimodel.api.spec import BuildSpec
from optimodel.builder.errors import BuildError, classify
from optimodel.triton import layout

log = logging.getLogger("optimodel.builder")

DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
BUILD_KEY_PATTERN = r"^[0-9a-f]{64}$"  # sha256 hex digest, as optimodel.api.key.build_key returns


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so a bad command line is an InvalidSpec build."""

    def error(self, message: str):  # type: ignore[override]
        raise BuildError("InvalidSpec", f"bad arguments: {message}")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="optimodel build", description="Compress, compile, verify and benchmark a "
                "model; write a Triton model repository and report.json to --output.")
    spec = p.add_mutually_exclusive_group(required=True)
    spec.add_argument("--spec-json", help="BuildSpec as JSON (model, optimization, gpuProduct)")
    spec.add_argument("--spec-file", help="file holding the BuildSpec as JSON or YAML")
    p.add_argument("--output", required=True,
                   help="output location: local dir, file://, pvc://claim/path or s3://bucket/prefix")
    p.add_argument("--model-name", default="model", help="Triton model name (default: model)")
    p.add_argument("--build-key", default=None,
                   help="the build key the operator computed (and named the Job after); the build "
                   "fails with BuildKeyMismatch if the builder computes a different one")
    p.add_argument("--artifact-scope", default=None, metavar="URI",
                   help="<root>/<namespace>/ the operator limits this build to: --output must lie "
                   "inside it, and an s3:// artifact credential that may list beyond it is refused "
                   "(CredentialsTooBroad); absent = no limit (local runs, shared credentials)")
    p.add_argument("--termination-message-path", default=None,
                   help=f"where the BuildSummary goes (default {DEFAULT_TERMINATION_PATH} when its "
                   "directory exists and is writable, else nowhere); '' disables it")
    p.add_argument("--work-dir", default=None,
                   help="scratch directory (kept afterwards); default: a temporary one, removed")
    p.add_argument("--batch-sizes", default=None,
                   help="comma-separated batch sizes for the benchmark sweep (default 1,8,32 capped "
                   "at maxBatchSize)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for PyTorch and ONNX Runtime alike (default: cores available)")
    p.add_argument("--quick", action="store_true",
                   help="shorter benchmark windows (tests, smoke runs); accuracy evidence is not reduced")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _termination_path(arg: str | None) -> Path | None:
    if arg is not None:
        return Path(arg) if arg else None
    directory = os.path.dirname(DEFAULT_TERMINATION_PATH)
    if os.path.isdir(directory) and os.access(directory, os.W_OK):
        return Path(DEFAULT_TERMINATION_PATH)
    return None


def _read_spec(args: argparse.Namespace) -> BuildSpec:
    try:
        if args.spec_json is not None:
            data = json.loads(args.spec_json)
        else:
            text = Path(args.spec_file).read_text()
            try:
                data = json.loads(text)
            except ValueError:
                import yaml

                data = yaml.safe_load(text)
        return BuildSpec.model_validate(data)
    except BuildError:
        raise
    except OSError as exc:
        raise BuildError("InvalidSpec", f"cannot read --spec-file: {exc}") from exc
    except Exception as exc:  # JSON/YAML syntax, pydantic validation
        raise BuildError("InvalidSpec", f"invalid build spec: {exc}") from exc


def _batch_sizes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise BuildError("InvalidSpec", f"--batch-sizes must be comma-separated integers: {text!r}") from exc
    if not sizes or any(b < 1 for b in sizes):
        raise BuildError("InvalidSpec", f"--batch-sizes must be positive integers: {text!r}")
    return sizes


def _emit(summary: BuildSummary, path: Path | None) -> None:
    text = summary.to_termination_message()
    print(text, flush=True)  # stdout: the summary, for humans and `kubectl logs`
    if path is None:
        return
    try:
        path.write_text(text)
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", path, exc)


def _cache_hit(spec: BuildSpec, key: str, output: str, model_name: str) -> BuildReport | None:
    """The existing report at ``output`` if it is a succeeded build of the same key and model."""
    from optimodel.builder import sources

    data = sources.read_report(output)
    if not data:
        return None
    try:
        report = BuildReport.model_validate(data)
    except Exception:
        return None
    if not (report.succeeded and report.build_key == key and report.engine
            and report.engine.model_name == model_name):
        return None
    if not sources.exists(output, layout.config_path("native", model_name)):
        return None
    # The engine's uri is the output root it is found at (a report from before ``uri`` meant
    # the output root, or an output copied elsewhere, says another).
    return report.model_copy(update={"engine": report.engine.model_copy(update={"uri": output.rstrip("/")})})


def main(argv: list[str] | None = None) -> int:
    """Run one build; returns the process exit code (0, or ``EXIT_CODES[reason]``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Our progress at INFO; third-party chatter (onnxruntime.quantization logs every tensor on
    # the root logger) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        # Job deletion / eviction sends SIGTERM: still write a summary and clean up.
        previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    termination: Path | None = None
    key = ""
    started = time.monotonic()
    build = None
    work_dir: Path | None = None
    cleanup = False
    try:
        try:
            args = parser().parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        log.setLevel(args.log_level)
        termination = _termination_path(args.termination_message_path)
        if not re.match(MODEL_NAME_PATTERN, args.model_name):
            raise BuildError("InvalidSpec", f"--model-name {args.model_name!r} must match {MODEL_NAME_PATTERN}")
        if args.build_key is not None and not re.fullmatch(BUILD_KEY_PATTERN, args.build_key):
            raise BuildError("InvalidSpec", f"--build-key {args.build_key[:80]!r} is not a build key "
                             "(64 lowercase hex characters)")
        key = args.build_key or ""  # the summary carries the operator's key, so it can match it
        spec = _read_spec(args)
        computed = build_key(spec)
        if args.build_key is not None and args.build_key != computed:
            log.error("--build-key %s, computed %s (builder version %s)", args.build_key, computed,
                      BUILDER_VERSION)
            raise BuildError("BuildKeyMismatch", _mismatch_message(args.build_key, computed))
        key = computed
        log.info("build key %s (model %s, format %s, precision %s, target %s)", key, spec.model.uri,
                 spec.model.format, spec.optimization.precision, spec.optimization.target)
        from optimodel.builder import sources

        sources.check_source_policy(spec)  # before the cache check and any download
        sources.check_artifact_scope(args.output, args.artifact_scope)

        cached = _cache_hit(spec, key, args.output, args.model_name)
        if cached is not None:
            log.info("cache hit: %s already holds a succeeded build of key %s; nothing to do",
                     args.output, key[:12])
            _emit(BuildSummary.from_report(cached, report_uri=_report_uri(args.output)), termination)
            return 0

        from optimodel.builder import hardware
        from optimodel.builder.pipeline import Build, BuildOptions

        if args.work_dir:
            work_dir = Path(args.work_dir).resolve()
            work_dir.mkdir(parents=True, exist_ok=True)
        else:
            work_dir = Path(tempfile.mkdtemp(prefix="optimodel-build-"))
            cleanup = True
        opts = BuildOptions(spec=spec, output=args.output, work_dir=work_dir, key=key, model_name=args.model_name,
                            batch_sizes=_batch_sizes(args.batch_sizes), quick=args.quick,
                            threads=args.threads or hardware.cpu_threads())
        build = Build(opts)
        report = build.run()
        log.info("build succeeded in %.1fs: %s, %.2fx the baseline, %s %.4f", time.monotonic() - started,
                 report.selected, report.speedup or 0, report.accuracy.metric, report.accuracy.value)
        _emit(BuildSummary.from_report(report, report_uri=_report_uri(args.output)), termination)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must produce a summary
        if isinstance(exc, Terminated):
            error = BuildError("Terminated", "terminated by SIGTERM (Job deleted, pod evicted or "
                               "preempted) before the build finished")
        elif isinstance(exc, KeyboardInterrupt):
            error = BuildError("InternalError", "interrupted")
        else:
            error = classify(exc)
        if error.reason == "InternalError" and not isinstance(exc, (BuildError, KeyboardInterrupt, Terminated)):
            log.exception("internal error")
        log.error("build failed: %s: %s", error.reason, error.message)
        if build is not None:
            report = build.report(error)
            if work_dir is not None and not cleanup:
                (work_dir / "report.failed.json").write_text(
                    report.model_dump_json(by_alias=True, indent=2, exclude_none=True))
        else:
            report = BuildReport(builder_version=BUILDER_VERSION, build_key=key, succeeded=False,
                                 reason=error.reason, message=error.message)
        _emit(BuildSummary.from_report(report), termination)
        return EXIT_CODES[error.reason]
    finally:
        if cleanup and work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


class Terminated(BaseException):
    """SIGTERM, raised from the signal handler. A BaseException on purpose: the pipeline's
    ``except Exception`` clauses (which turn a candidate's error into FAIL) must not swallow it."""


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Terminated()


def _report_uri(output: str) -> str:
    return f"{output.rstrip('/')}/report.json"


def _mismatch_message(requested: str, computed: str) -> str:
    return (f"build key mismatch: the operator asked for key {requested[:12]} but this builder "
            f"(version {BUILDER_VERSION}) computes {computed[:12]} for the same spec: the operator "
            "and builder images disagree (version skew); upgrade them together (same release)")


if __name__ == "__main__":
    sys.exit(main())
