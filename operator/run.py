"""``optimodel operator``: run the kopf operator with the handlers registered.

Standalone (no peering CRDs) and namespace-scoped when ``OPTIMODEL_NAMESPACES`` is set, so the
chart's namespaced mode needs only Roles. Liveness is served on ``--health-port`` (kopf's
``/healthz``), the operator's own counters on ``--metrics-port`` (``/metrics``).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket

import kopf

from optimodel.operator.settings import OperatorSettings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="optimodel operator", description=__doc__.splitlines()[0])
    parser.add_argument("--health-port", type=int, default=8080,
                        help="port of the /healthz liveness endpoint (0 = off)")
    parser.add_argument("--metrics-port", type=int, default=9090,
                        help="port of the Prometheus /metrics endpoint (0 = off)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = OperatorSettings.from_env()
    from optimodel.operator import handlers  # noqa: F401  (registers the handlers)
    from optimodel.operator import metrics

    if args.metrics_port:
        metrics.serve(args.metrics_port)

    kopf.run(
        # kopf's default identity calls getpass.getuser(), which raises for a UID with no passwd
        # entry: the normal case in a pod running as an arbitrary non-root UID.
        identity=os.environ.get("POD_NAME") or socket.gethostname(),
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
    )
    return 0
