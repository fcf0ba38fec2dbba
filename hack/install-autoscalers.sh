#!/usr/bin/env bash
# Build and cache the real autoscaling components the end-to-end tier runs, from their Go
# modules at pinned versions, and print the directory holding them:
#   prometheus-adapter  (serves custom.metrics.k8s.io from Prometheus: the HPA engine)
#   keda-operator, keda-adapter (KEDA's controller and metrics API server: the KEDA engine)
# plus KEDA's CRDs of the same release. Built once per version under $OPTIMODEL_CACHE/bin.
#
# KEDA's go.mod has a replace directive, which `go install pkg@version` refuses, so it is built
# through a wrapper module that copies it (as the Kubernetes binaries are).
set -euo pipefail
ADAPTER_VERSION="${ADAPTER_VERSION:-v0.12.0}"
KEDA_VERSION="${KEDA_VERSION_E2E:-v2.21.0}"
CACHE="${OPTIMODEL_CACHE:-$HOME/.cache/optimodel}"
BIN="$CACHE/bin/autoscalers-adapter-$ADAPTER_VERSION-keda-$KEDA_VERSION"
mkdir -p "$BIN"
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
log() { printf '[install-autoscalers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

# `go install pkg@version` asks the proxy for the module's version list (deprecation check), which
# the proxy refuses for prometheus-adapter (403): build through a wrapper module instead.
if [ ! -x "$BIN/prometheus-adapter" ]; then
  dir="$CACHE/src/prometheus-adapter-$ADAPTER_VERSION"
  mkdir -p "$dir"
  if [ ! -f "$dir/go.sum" ]; then
    printf 'module optimodel.dev/adapterbin\n\ngo 1.22\n\nrequire sigs.k8s.io/prometheus-adapter %s\n' "$ADAPTER_VERSION" >"$dir/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "sigs.k8s.io/prometheus-adapter/cmd/adapter"\n' >"$dir/tools.go"
    (cd "$dir" && go mod tidy -e >/dev/null 2>&1; go mod download sigs.k8s.io/prometheus-adapter) \
      || fail "go mod download for prometheus-adapter $ADAPTER_VERSION"
  fi
  log "building prometheus-adapter $ADAPTER_VERSION"
  t0=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/prometheus-adapter.tmp" sigs.k8s.io/prometheus-adapter/cmd/adapter) \
    || fail "prometheus-adapter $ADAPTER_VERSION did not build"
  mv "$BIN/prometheus-adapter.tmp" "$BIN/prometheus-adapter"
  log "built prometheus-adapter in $((SECONDS - t0)) s"
fi

if [ ! -x "$BIN/keda-operator" ] || [ ! -x "$BIN/keda-adapter" ] || [ ! -f "$BIN/crds/.complete" ]; then
  dir="$CACHE/src/keda-$KEDA_VERSION"
  mkdir -p "$dir"
  if [ ! -f "$dir/go.sum" ]; then
    mod=$(curl -fsSL "${GOPROXY%%,*}/github.com/kedacore/keda/v2/@v/$KEDA_VERSION.mod") \
      || fail "could not fetch KEDA $KEDA_VERSION go.mod"
    {
      echo "module optimodel.dev/kedabins"
      echo
      echo "go $(awk '/^go /{print $2; exit}' <<<"$mod")"
      echo
      echo "require github.com/kedacore/keda/v2 $KEDA_VERSION"
      echo
      grep -E '^(replace|exclude) ' <<<"$mod" || true
    } >"$dir/go.mod"
    cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
GO
    (cd "$dir" && go mod tidy -e >/dev/null 2>&1; go mod download github.com/kedacore/keda/v2) \
      || fail "go mod download for KEDA $KEDA_VERSION"
  fi
  ldflags="-s -w -X github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}"
  for cmd in operator adapter; do
    [ -x "$BIN/keda-$cmd" ] && continue
    log "building keda-$cmd $KEDA_VERSION (cold: several minutes on 2 cores)"
    t0=$SECONDS
    (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$BIN/keda-$cmd.tmp" "github.com/kedacore/keda/v2/cmd/$cmd") \
      || fail "keda-$cmd $KEDA_VERSION did not build"
    mv "$BIN/keda-$cmd.tmp" "$BIN/keda-$cmd"
    log "built keda-$cmd in $((SECONDS - t0)) s"
  done
  src=$(cd "$dir" && go list -m -f '{{.Dir}}' github.com/kedacore/keda/v2)
  mkdir -p "$BIN/crds"
  cp "$src"/config/crd/bases/*.yaml "$BIN/crds/"
  touch "$BIN/crds/.complete"
fi
echo "$BIN"
