#!/usr/bin/env bash
# Install everything the tests need, in two parallel chains, and print the venv path last.
#
# Why parallel: on a cold machine the Go builds (Kubernetes, MinIO, prometheus-adapter, KEDA)
# are CPU-bound for half an hour, while the Python environment, Debian packages and the
# project's images are mostly network and disk. Each chain is sequential; a failure in either
# fails the whole, naming the step. Every step is a cached no-op when its output exists.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT

go_chain() {
  "$here/install-binaries.sh" >/dev/null
  "$here/install-minio.sh" >/dev/null
  "$here/install-autoscalers.sh" >/dev/null
  "$here/install-argocd.sh" >/dev/null
}
python_chain() {
  "$here/python-env.sh" >"$logdir/venv"
  "$here/install-prometheus.sh" >/dev/null
  "$here/install-node-deps.sh" >/dev/null
  python3 "$here/images.py" build >/dev/null
}

go_chain 2> >(sed 's/^/[go] /' >&2) &
go_pid=$!
python_chain 2> >(sed 's/^/[py] /' >&2) &
py_pid=$!
status=0
wait "$go_pid" || { echo "[install-all] the Go chain failed (binaries, MinIO, autoscalers, Argo CD)" >&2; status=1; }
wait "$py_pid" || { echo "[install-all] the Python chain failed (venv, Prometheus, node packages, images)" >&2; status=1; }
[ "$status" -eq 0 ] || exit 1
cat "$logdir/venv"
