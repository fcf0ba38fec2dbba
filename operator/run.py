"""``optimodel operator``: run the kopf operator with the handlers registered.

kopf watches (namespace-scoped when ``OPTIMODEL_NAMESPACES`` is set, so the chart's namespaced
mode needs only Roles) and feeds the work queue; our workers reconcile. With leader election
on (several replicas), every replica watches and queues, and only the Lease holder's workers
run. Liveness is served on ``--health-port`` (``/healthz``), the operator's own counters on
``--metrics-port`` (``/metrics``); both come from our small HTTP server, which a standby serves
too.
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
    # kopf logs every handler call at INFO; ours only enqueue, the reconcile logs what it does.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings = OperatorSettings.from_env()
    from optimodel.operator import handlers, metrics
    from optimodel.operator.controller import Controller
    from optimodel.operator.kube import Kube

    # kopf's default identity calls getpass.getuser(), which raises for a UID with no passwd
    # entry: the normal case in a pod running as an arbitrary non-root UID.
    identity = os.environ.get("POD_NAME") or socket.gethostname()
    kube = Kube(identity=identity)
    controller = Controller(kube, settings)
    handlers.use(controller)

    def lead() -> None:
        metrics.set_gauge("optimodel_leader", 1)
        controller.start()

    if settings.leader_election:
        from optimodel.operator.leader import LeaderElector

        def stop_leading() -> None:
            # Another replica may take over now: stop at once, as client-go's controllers do;
            # the kubelet restarts the container, which then stands by.
            metrics.set_gauge("optimodel_leader", 0)
            logging.getLogger("optimodel.leader").error("leadership lost; exiting")
            os._exit(1)

        elector = LeaderElector(kube, settings, identity, on_start=lead, on_stop=stop_leading)
        metrics.set_health_check(lambda: controller.alive() if elector.leading.is_set() else True)
        metrics.set_gauge("optimodel_leader", 0)
        elector.start()
    else:
        metrics.set_health_check(controller.alive)
        lead()

    for port in sorted({p for p in (args.health_port, args.metrics_port) if p}):
        metrics.serve(port)  # both paths on each port

    kopf.run(
        identity=identity,
        standalone=True,  # no kopf peering: the Lease decides who acts (see leader.py)
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
    )
    return 0
