"""The operator's own Prometheus metrics: reconcile counts and durations, build outcomes.

Deliberately tiny (standard library only, no client library in the slim image): a few
process-wide counters rendered in the Prometheus text format on ``/metrics``.
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
}


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
