"""The ``optimodel`` command line: one entry point, one subcommand per job.

Heavy imports (torch, onnxruntime, tensorrt) happen inside the subcommand that needs them, so
``optimodel crd`` and ``optimodel operator`` run in the slim operator image.
"""

from __future__ import annotations

import argparse
import sys


def _crd(_: argparse.Namespace, rest: list[str]) -> int:
    from optimodel.api.crd import render_crd

    sys.stdout.write(render_crd())
    return 0


def _build(_: argparse.Namespace, rest: list[str]) -> int:
    from optimodel.builder.cli import main as build_main

    return build_main(rest)


def _serve(_: argparse.Namespace, rest: list[str]) -> int:
    from optimodel.serving.cli import serve_main

    return serve_main(rest)


def _stage(_: argparse.Namespace, rest: list[str]) -> int:
    from optimodel.serving.cli import stage_main

    return stage_main(rest)


def _tritonserver(_: argparse.Namespace, rest: list[str]) -> int:
    from optimodel.serving.cli import tritonserver_main

    return tritonserver_main(rest)


def _demo(_: argparse.Namespace, rest: list[str]) -> int:
    from optimodel.serving.demo import main as demo_main

    return demo_main(rest)


def _artifact_policy(_: argparse.Namespace, rest: list[str]) -> int:
    from optimodel import artifacts

    parser = argparse.ArgumentParser(
        prog="optimodel artifact-policy",
        description="Print the S3 IAM policy (AWS IAM, MinIO) that limits a namespace's artifact "
                    "credential to its own folder, <root>/<namespace>/.")
    parser.add_argument("scope", nargs="?", metavar="SCOPE",
                        help="s3://bucket/<root>/<namespace>/ (or give --root and --namespace)")
    parser.add_argument("--root", help="the chart's artifacts.root, e.g. s3://bucket/optimodel")
    parser.add_argument("--namespace", help="the model namespace the credential is for")
    parser.add_argument("--read-only", action="store_true",
                        help="read and list only (a staging-only credential)")
    args = parser.parse_args(rest)
    if bool(args.scope) == bool(args.root and args.namespace):
        parser.error("give SCOPE, or both --root and --namespace")
    scope = args.scope or artifacts.namespace_scope(args.root, args.namespace)
    try:
        sys.stdout.write(artifacts.policy_json(scope, write=not args.read_only) + "\n")
    except ValueError as exc:
        parser.error(str(exc))
    return 0


def _operator(_: argparse.Namespace, rest: list[str]) -> int:
    from optimodel.operator.run import main as operator_main

    return operator_main(rest)


COMMANDS = {
    "crd": (_crd, "print the OptimizedModel CustomResourceDefinition (generated from the API models)"),
    "build": (_build, "compress, compile, verify and benchmark a model; write a Triton repository"),
    "serve": (_serve, "serve a built model repository with a local Triton Inference Server"),
    "stage-repository": (_stage, "copy a built repository into a Triton pod and apply serving settings"),
    "tritonserver": (_tritonserver, "run the local Triton Inference Server (pytriton wheel, Python "
                                    "backend) with tritonserver's own arguments"),
    "demo": (_demo, "the main job locally: build MiniLM, serve it with Triton, send real traffic"),
    "artifact-policy": (_artifact_policy, "print the S3 policy limiting a namespace's artifact "
                                          "credential to <root>/<namespace>/"),
    "operator": (_operator, "run the Kubernetes operator (kopf)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="optimodel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    handler, _ = COMMANDS[args.command]
    return handler(args, rest)


if __name__ == "__main__":
    sys.exit(main())
