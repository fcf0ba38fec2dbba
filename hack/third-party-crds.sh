#!/usr/bin/env bash
# Fetch the real KEDA and Prometheus Operator CRDs from their Go modules (pinned), cache them, and
# print the directory holding them. Integration tests install these to prove the operator creates
# ScaledObjects and PodMonitors the real schemas accept, and picks KEDA when its CRD exists.
set -euo pipefail
KEDA_VERSION="${KEDA_VERSION:-v2.16.1}"
PROMOP_VERSION="${PROMOP_VERSION:-v0.85.0}"
CACHE="${OPTIMODEL_CACHE:-$HOME/.cache/optimodel}"
out="$CACHE/crds/keda-$KEDA_VERSION-promop-$PROMOP_VERSION"
if [ ! -f "$out/.complete" ]; then
  export GOFLAGS=-mod=mod GOTOOLCHAIN=local
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  cd "$work"
  keda=$(go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  promop=$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMOP_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -n "$keda" ] && [ -n "$promop" ] || { echo "third-party-crds: go mod download failed" >&2; exit 1; }
  mkdir -p "$out"
  cp "$keda/config/crd/bases/keda.sh_scaledobjects.yaml" \
     "$promop/example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml" \
     "$promop/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml" "$out/"
  touch "$out/.complete"
fi
echo "$out"
