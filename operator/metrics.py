"""The operator's own Prometheus metrics and its liveness endpoint.

Deliberately tiny (standard library only, no client library in the slim image): a few
process-wide counters and gauges rendered in the Prometheus text format on ``/metrics``, and
``/healthz`` answering from a health callback (a standby replica is healthy too: it serves
this endpoint while kopf is not yet running).
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()
_counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
_HELP = {
    "optimodel_reconcile_total": ("counter", "Reconciles of OptimizedModels, by result."),
    "optimodel_reconcile_seconds_sum": ("counter", "Total seconds spent reconciling."),
    "optimodel_reconcile_seconds_count": ("counter", "Number of timed reconciles."),
    "optimodel_builds_total": ("counter", "Build Jobs by event (created, succeeded, failed, cancelled)."),
    "optimodel_child_writes_total": ("counter", "Child object writes by kind and action (create, patch)."),
    "optimodel_api_retries_total": ("counter", "API requests retried after a transient failure, by cause."),
    "optimodel_workqueue_depth": ("gauge", "Models waiting to be reconciled now."),
    "optimodel_leader": ("gauge", "1 while this replica holds the leader Lease (or runs alone)."),
}
_health: list = [lambda: True]


def set_gauge(name: str, value: float, **labels: str) -> None:
    with _lock:
        _counters[(name, tuple(sorted(labels.items())))] = value


def set_health_check(check) -> None:
    """``check()`` -> bool decides what ``/healthz`` answers."""
    _health[0] = check


def inc(name: str, value: float = 1.0, **labels: str) -> None:
    with _lock:
        _counters[(name, tuple(sorted(labels.items())))] += value


def render() -> str:
    """Prometheus text exposition of every counter."""
    lines = []
    with _lock:
        items = sorted(_counters.items())
    seen = set()
    for (name, labels), value in items:
        if name not in seen and name in _HELP:
            kind, text = _HELP[name]
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            seen.add(name)
        label_text = ",".join(f'{k}="{v}"' for k, v in labels)
        lines.append(f"{name}{{{label_text}}} {value:g}" if label_text else f"{name} {value:g}")
    return "\n".join(lines) + "\n"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        if self.path == "/healthz":
            healthy = bool(_health[0]())
            body = b"ok\n" if healthy else b"unhealthy\n"
            self.send_response(200 if healthy else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path != "/metrics":
            self.send_error(404)
            return
        body = render().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:  # scrapes are not news
        pass


def serve(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Start the /metrics endpoint in a daemon thread."""
    server = ThreadingHTTPServer((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
