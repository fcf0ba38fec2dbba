"""``optimodel serve`` and ``optimodel stage-repository``.

``serve`` is for people: a built model answers on localhost in one command. ``stage-repository``
is for the Triton pod's init container: argv in, files out, exit code and one summary line.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from optimodel.triton.layout import CONFIG_FILE, LAYOUT_DIRS, PYTHON_DIR, Layout
from optimodel.triton.stage import StageError


def resolve_local_repository(path: Path) -> Path:
    """The repository to serve locally: a build output's ``repository-python/``, or ``path``.

    The local Triton (pytriton wheel) has only the Python backend, so of a build output the
    Python-backend variant is served.
    """
    if (path / PYTHON_DIR).is_dir():
        return path / PYTHON_DIR
    if (path / "report.json").is_file():
        raise StageError(f"{path} is a build output without {PYTHON_DIR}/ (a TensorRT "
                         "engine needs a GPU Triton with the TensorRT backend, not the local one)")
    if (path / CONFIG_FILE).is_file():
        raise StageError(f"{path} is a model directory; pass the repository that contains it "
                         f"({path.parent})")
    return path


def _port(text: str) -> int | None:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("a port is 0..65535 (0 = pick a free one)")
    return value or None


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="optimodel serve",
        description="Serve a built model repository with a local Triton Inference Server (CPU, "
                    "Python backend) until Ctrl-C / SIGTERM.")
    parser.add_argument("path", type=Path,
                        help="build output directory (its repository-python/ is served) or a "
                             "Triton model repository")
    parser.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="model to load (repeatable; default: every model in the repository)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--http-port", type=_port, default=8000, help="default 8000; 0 = any free")
    parser.add_argument("--grpc-port", type=_port, default=8001, help="default 8001; 0 = any free")
    parser.add_argument("--metrics-port", type=_port, default=8002, help="default 8002; 0 = any free")
    parser.add_argument("--ready-timeout", type=float, default=180.0, metavar="SECONDS")
    parser.add_argument("--log-verbose", type=int, default=0, help="Triton --log-verbose level")
    args = parser.parse_args(argv)

    from optimodel.triton.local import LocalTriton, TritonError

    try:
        repository = resolve_local_repository(args.path)
        triton = LocalTriton(repository, args.model, host=args.host, http_port=args.http_port,
                             grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                             ready_timeout=args.ready_timeout, log_verbose=args.log_verbose)
    except (StageError, TritonError) as exc:
        print(f"optimodel serve: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"starting Triton on {repository} (log: {triton.log_path})", flush=True)
        try:
            triton.start()
        except TritonError as exc:
            print(f"optimodel serve: {exc}", file=sys.stderr)
            return 1
        ep = triton.endpoints
        assert ep is not None
        print(f"Triton Inference Server ready (pid {triton.process.pid if triton.process else '?'})")
        print(f"  HTTP     {ep.http_url}    (KServe v2: {ep.http_url}/v2/models/<model>/infer)")
        print(f"  gRPC     {ep.grpc}")
        print(f"  metrics  {ep.metrics_url}")
        for model in triton.models:
            state = "READY" if triton.model_ready(model) else "NOT READY"
            print(f"  model    {model}: {state}")
        print("Ctrl-C to stop.", flush=True)
        while not stop.wait(1.0):
            if not triton.running:
                code = triton.process.returncode if triton.process else None
                print(f"optimodel serve: tritonserver exited ({code}).\n{triton.log_tail()}",
                      file=sys.stderr)
                return 1
        print("stopping Triton", flush=True)
        return 0
    finally:
        triton.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stage_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="optimodel stage-repository",
        description="Copy a built model repository from artifact storage into a Triton model "
                    "repository directory and apply the serving settings to its config.pbtxt.")
    parser.add_argument("--from", dest="source", required=True, metavar="URI",
                        help="path, file://, pvc://<claim>/<path> (under $OPTIMODEL_PVC_ROOT, "
                             "default /mnt/pvc) or s3://bucket/prefix: a build output, a "
                             "repository or a model directory")
    parser.add_argument("--to", dest="dest", required=True, type=Path, metavar="DIR",
                        help="Triton model repository directory (the model lands in DIR/NAME)")
    parser.add_argument("--model-name", required=True, metavar="NAME",
                        help="name Triton serves the model under")
    parser.add_argument("--serving-json", default=None, metavar="JSON",
                        help="spec.serving of the OptimizedModel (camelCase JSON); default: "
                             "the API defaults")
    parser.add_argument("--layout", choices=sorted(LAYOUT_DIRS), default="native",
                        help="native = repository/ (ONNX Runtime / TensorRT backend, GPU "
                             "instances); python = repository-python/ (CPU instances)")
    parser.add_argument("--artifact-scope", default=None, metavar="URI",
                        help="<root>/<namespace>/ the operator limits staging to: --from must lie "
                             "inside it, and an s3:// credential that may list beyond it is refused")
    args = parser.parse_args(argv)

    from pydantic import ValidationError

    from optimodel.api.spec import Serving
    from optimodel.triton.config import parse_config
    from optimodel.triton.stage import stage_repository

    try:
        serving = Serving.model_validate(json.loads(args.serving_json)) if args.serving_json else Serving()
    except (ValueError, ValidationError) as exc:
        print(f"optimodel stage-repository: invalid --serving-json: {exc}", file=sys.stderr)
        return 2
    layout: Layout = args.layout
    try:
        model_dir = stage_repository(args.source, args.dest, args.model_name, serving, layout,
                                     scope=args.artifact_scope)
    except (StageError, OSError) as exc:
        print(f"optimodel stage-repository: {exc}", file=sys.stderr)
        return 1
    config = parse_config((model_dir / CONFIG_FILE).read_text())
    batching = ("off" if not config.HasField("dynamic_batching") else
                f"on (max_queue_delay_us={config.dynamic_batching.max_queue_delay_microseconds}, "
                f"preferred={list(config.dynamic_batching.preferred_batch_size)})")
    group = config.instance_group[0]
    print(json.dumps({
        "model": config.name, "path": str(model_dir), "layout": layout,
        "dynamicBatching": batching, "instances": group.count * max(1, len(group.gpus)),
        "kind": "KIND_GPU" if group.kind == group.KIND_GPU else "KIND_CPU",
    }, separators=(",", ":")))
    return 0


def tritonserver_main(argv: list[str]) -> int:
    """``optimodel tritonserver ARGS``: the local Triton, with ``tritonserver``'s own arguments.

    ``--prepare-only`` assembles the Python backend directory and exits (the local Triton image
    does this at build time, so a read-only root filesystem works at run time).
    """
    from optimodel.triton.local import TritonError, exec_server, prepare_backend_dir

    try:
        if argv == ["--prepare-only"]:
            print(prepare_backend_dir())
            return 0
        exec_server(argv)
    except TritonError as exc:
        print(f"optimodel tritonserver: {exc}", file=sys.stderr)
        return 2
    return 0  # not reached: exec_server replaces the process

