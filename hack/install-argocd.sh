#!/usr/bin/env bash
# Build and cache the Argo CD multi-call binary (application controller + repo server + the rest)
# from its Go module, in the style of hack/install-binaries.sh, and its CRDs. Redis, which the
# controller and the repo server need, comes from Debian (hack/install-node-deps.sh).
#
# Why a wrapper module: argo-cd's go.mod carries replace directives (k8s.io/* pinned to one
# staging version, golang/protobuf, grpc-gateway, x/tools, yaml), so `go install module@version`
# refuses it. The wrapper requires argo-cd at the pinned tag, copies its module-path replaces and
# builds github.com/argoproj/argo-cd/v3/cmd. `go mod tidy` then selects exactly the versions the
# upstream go.mod lists (the script checks this).
#
# Why v3.2.11 and not the newest tag (v3.6.1 at the time of writing):
#   * v3.3.0 and later keep gitops-engine inside the argo-cd repo and point at it with a
#     *relative* replace (`=> ./gitops-engine`). That directory is its own module, so it is not in
#     the argo-cd module zip, and the matching gitops-engine module zips are not on the proxy
#     (github.com/argoproj/argo-cd/gitops-engine/v3@v3.6.x: 403; v3.3.x-v3.5.x require a
#     placeholder pseudo-version that is either unavailable or stale).
#   * v3.6.x also declares `go 1.27.0`; this machine has go1.26 (GOTOOLCHAIN=local).
#   * v3.2.12 does not compile (controller/cache/info.go calls settings.ValidateExternalURL,
#     which that tag does not define: a broken backport upstream).
#   v3.2.11 is the newest tag whose full source is on the module proxy and that compiles with
#   go1.26; it uses k8s.io/client-go v0.34.0, matching the project's kube v1.34.x.
#
# The binary dispatches on argv[0] (or $ARGOCD_BINARY_NAME): the script adds
# argocd-application-controller and argocd-repo-server symlinks next to it.
#
# Usage: hack/install-argocd.sh       # build what is missing, print the bin dir last
set -euo pipefail

ARGOCD_VERSION="${ARGOCD_VERSION:-v3.2.11}"

LOG_NAME=install-argocd
# shellcheck source=hack/go-env.sh
. "$(dirname "$0")/go-env.sh"
BIN="$CACHE/bin/argocd-$ARGOCD_VERSION"
mkdir -p "$BIN" "$WORK"

build_argocd() {
  local dir="$WORK/argocd-$ARGOCD_VERSION"
  mkdir -p "$dir"
  if [ ! -f "$dir/go.sum" ]; then
    log "preparing wrapper module for github.com/argoproj/argo-cd/v3 $ARGOCD_VERSION"
    local mod
    mod=$(curl -fsSL "${GOPROXY%%,*}/github.com/argoproj/argo-cd/v3/@v/$ARGOCD_VERSION.mod") \
      || fail "could not fetch argo-cd $ARGOCD_VERSION go.mod from the module proxy"
    local need have_go
    need=$(awk '/^go /{print $2; exit}' <<<"$mod")
    have_go=$(go env GOVERSION); have_go=${have_go#go}
    [ "$(printf '%s\n%s\n' "$need" "$have_go" | sort -V | head -1)" = "$need" ] \
      || fail "argo-cd $ARGOCD_VERSION needs go >= $need, this machine has go $have_go (GOTOOLCHAIN=local)"
    if grep -qE '=>[[:space:]]*\.{1,2}/' <<<"$mod"; then
      fail "argo-cd $ARGOCD_VERSION has a relative replace ($(grep -E '=>[[:space:]]*\.{1,2}/' <<<"$mod" | xargs)); its target is not in the module zip"
    fi
    {
      echo "module optimodel.dev/argocdbin"
      echo
      echo "go $need"
      echo
      echo "require github.com/argoproj/argo-cd/v3 $ARGOCD_VERSION"
      echo
      # copy upstream replace directives, both the block form and single-line form
      awk '/^replace[[:space:]]*\(/{b=1;next} b&&/^\)/{b=0;next} b&&/=>/{print "replace " $0; next} /^replace .*=>/{print}' <<<"$mod" \
        | sed -E 's/^replace[[:space:]]+/replace /'
    } >"$dir/go.mod"
    cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import _ "github.com/argoproj/argo-cd/v3/cmd"
GO
    (cd "$dir" && go mod tidy >/dev/null 2>&1) \
      || { rm -f "$dir/go.sum"; fail "go mod tidy for argo-cd $ARGOCD_VERSION"; }
    # the wrapper must select exactly what upstream pinned
    local all diffs
    all=$(cd "$dir" && go list -m all)
    diffs=$(awk '/^require[[:space:]]*\(/{b=1;next} b&&/^\)/{b=0} b&&NF>=2&&$1!~/^\/\//{print $1, $2}' <<<"$mod" |
      while read -r p v; do
        sel=$(awk -v p="$p" '$1==p{print $2; exit}' <<<"$all")
        [ "$sel" = "$v" ] || echo "$p upstream=$v selected=$sel"
      done)
    [ -z "$diffs" ] || { rm -f "$dir/go.sum"; fail "wrapper build list differs from upstream go.mod: $diffs"; }
  fi
  have argocd && return 0
  local kubectl_version
  kubectl_version=$(cd "$dir" && go list -m k8s.io/client-go | awk '{print $NF}')
  local p=github.com/argoproj/argo-cd/v3/common
  local ldflags="-s -w -X $p.version=${ARGOCD_VERSION#v} -X $p.gitTag=$ARGOCD_VERSION -X $p.gitTreeState=clean -X $p.kubectlVersion=$kubectl_version -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  log "building argocd $ARGOCD_VERSION (cold: ~4-8 min on 2 cores, ~2 GiB peak RSS per compile process)"
  local t0=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$BIN/argocd.tmp" github.com/argoproj/argo-cd/v3/cmd) \
    || fail "argocd $ARGOCD_VERSION did not build"
  mv "$BIN/argocd.tmp" "$BIN/argocd"
  log "built argocd in $((SECONDS - t0)) s"
}

# Argo CD's own CRDs (Application, AppProject) at the same version, from the module source.
copy_crds() {
  [ -f "$BIN/crds/application-crd.yaml" ] && return 0
  local dir="$WORK/argocd-$ARGOCD_VERSION" src
  src=$(cd "$dir" && go list -m -f '{{.Dir}}' github.com/argoproj/argo-cd/v3)/manifests/crds
  [ -f "$src/application-crd.yaml" ] || fail "no manifests/crds in the argo-cd $ARGOCD_VERSION module"
  mkdir -p "$BIN/crds"
  cp "$src/application-crd.yaml" "$src/appproject-crd.yaml" "$BIN/crds/"
}

build_argocd
copy_crds
for name in argocd-application-controller argocd-repo-server; do
  ln -sfn argocd "$BIN/$name"
done

version=$("$BIN/argocd" version --client --short 2>/dev/null || true)
[[ "$version" == *"${ARGOCD_VERSION#v}"* ]] || fail "argocd does not report $ARGOCD_VERSION: $version"
log "all binaries present in $BIN"
echo "$BIN"
