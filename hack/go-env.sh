# Sourced by the scripts that build Go binaries into the cache (install-binaries.sh,
# install-argocd.sh): where the cache and the module sources live, how Go builds (static, this
# machine's toolchain only, module mode, the module proxy), and the log helpers. The sourcing
# script sets LOG_NAME before and BIN (its cached bin dir, which `have` looks in) after.
CACHE="${OPTIMODEL_CACHE:-$HOME/.cache/optimodel}"
WORK="$CACHE/src"

export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

log() { printf '[%s %s] %s\n' "$LOG_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

have() { [ -x "$BIN/$1" ]; }
