#!/usr/bin/env bash
# Build and cache the pinned control-plane binaries the tests and `make dev-cluster` run.
#
# Why build: this machine has no container engine and no download site but the Go module proxy,
# so kind/minikube/envtest tarballs are out. Every binary is compiled from its Go module at a
# pinned version and cached outside the work tree under $OPTIMODEL_CACHE/bin/<version>/, so a
# second run (and CI on the same machine) costs nothing. A binary is rebuilt only when missing.
#
# Usage: hack/install-binaries.sh            # build what is missing, print the bin dir last
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.5}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${HELM_VERSION:-v3.19.5}"

LOG_NAME=install-binaries
# shellcheck source=hack/go-env.sh
. "$(dirname "$0")/go-env.sh"
BIN="$CACHE/bin/kube-$KUBE_VERSION"
mkdir -p "$BIN" "$WORK"

# --- Kubernetes: wrapper module replacing every staging module with its v0.X.Y tag ----------
build_kube() {
  local staging_version="v0.${KUBE_VERSION#v1.}"
  local dir="$WORK/kube-$KUBE_VERSION"
  mkdir -p "$dir"
  if [ ! -f "$dir/go.sum" ]; then
    log "preparing wrapper module for k8s.io/kubernetes $KUBE_VERSION (staging $staging_version)"
    local mod
    mod=$(curl -fsSL "${GOPROXY%%,*}/k8s.io/kubernetes/@v/$KUBE_VERSION.mod") \
      || fail "could not fetch k8s.io/kubernetes $KUBE_VERSION go.mod from the module proxy"
    {
      echo "module optimodel.dev/kubebins"
      echo
      echo "go $(awk '/^go /{print $2; exit}' <<<"$mod")"
      echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo
      awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print "replace " $1 " => " $1 " '"$staging_version"'"}' <<<"$mod"
    } >"$dir/go.mod"
    cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
    (cd "$dir" && go mod tidy -e >/dev/null 2>&1; go mod download k8s.io/kubernetes) \
      || fail "go mod download for k8s.io/kubernetes $KUBE_VERSION"
  fi
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION") -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitTreeState=clean"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    if have "$cmd"; then continue; fi
    log "building $cmd $KUBE_VERSION (cold: several minutes each on 2 cores)"
    local t0=$SECONDS
    (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd") \
      || fail "$cmd $KUBE_VERSION did not build"
    mv "$BIN/$cmd.tmp" "$BIN/$cmd"
    log "built $cmd in $((SECONDS - t0)) s"
  done
}

# --- etcd: `go install` fails on its relative replaces, so wrap etcdmain.Main ----------------
build_etcd() {
  have etcd && return 0
  local dir="$WORK/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<GO
module optimodel.dev/etcdbin

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GO
  cat >"$dir/main.go" <<'GO'
// Command etcd runs the etcd server from the pinned go.etcd.io/etcd/server/v3 module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  log "building etcd $ETCD_VERSION"
  local t0=$SECONDS
  (cd "$dir" && go mod tidy >/dev/null 2>&1 && \
    go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" .) || fail "etcd $ETCD_VERSION did not build"
  mv "$BIN/etcd.tmp" "$BIN/etcd"
  log "built etcd in $((SECONDS - t0)) s"
}

# --- kwok and helm: plain `go install` at a pinned tag -------------------------------------
go_install() {  # name module version
  local name=$1 module=$2 version=$3
  have "$name" && return 0
  log "building $name $version"
  local t0=$SECONDS
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "$module@$version" || fail "$name $version did not build"
  log "built $name in $((SECONDS - t0)) s"
}

build_etcd
go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
build_kube

client_version=$("$BIN/kubectl" version --client 2>/dev/null || true)
[[ "$client_version" == *"$KUBE_VERSION"* ]] \
  || fail "kubectl does not report $KUBE_VERSION (version stamping broken): $client_version"
log "all binaries present in $BIN"
echo "$BIN"
