#!/usr/bin/env bash
# Install a real Prometheus server (the Debian package) when it is missing, and print its version.
#
# Why: the serving tests evaluate the exact PromQL the operator writes into KEDA ScaledObjects and
# the prometheus-adapter rule against a real Prometheus scraping a real Triton. Only the binary is
# needed: the tests run it in the foreground with their own config and data directory, so no
# service is started here (policy-rc.d keeps the package's postinst from trying).
set -euo pipefail
log() { printf '[install-prometheus %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    log "prometheus is missing and this is not root: run 'sudo $0' or install the 'prometheus' package"
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package's maintainer scripts from starting a system service.
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  trap 'if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  log "installing prometheus with apt-get"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
prometheus --version 2>&1 | head -1
