"""Pod specs and host lookups shared by the tests that run real pods on the real node."""

from __future__ import annotations

from pathlib import Path

import realnode  # hack/realnode.py

RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
    "readOnlyRootFilesystem": True,
}


def on_real_node(containers: list[dict], **spec) -> dict:
    """A pod spec that lands on the real node (toleration + selector) and passes `restricted`."""
    return {
        "nodeSelector": dict(realnode.NODE_SELECTOR),
        "tolerations": [dict(realnode.TOLERATION)],
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"securityContext": RESTRICTED, "imagePullPolicy": "Never", **c} for c in containers],
        **spec,
    }


# A tiny HTTP server in the operator image's Python: answers its pod name on any path.
WHOAMI = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = os.environ['POD_NAME'].encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers(); self.wfile.write(body)\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('', 8080), H).serve_forever()\n"
)


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (containers share the host's /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids
