#!/usr/bin/env bash
# Install what a real node and the image builds need (and Redis, for Argo CD in tests/gitops),
# from Debian's packages, pinned by version.
#
# Why Debian: no container registry or download site is reachable, but Debian's mirror is; its
# containerd, runc and CNI plugins ran the first real pods here (shared/DESIGN.md section 8). The
# versions are pinned by prefix (a security update within the same upstream release is taken,
# a new upstream release is not) and checked after install, so a changed mirror fails loudly.
# Prints one line per package with its installed version.
set -euo pipefail
log() { printf '[install-node-deps %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# package=version-prefix (apt matches the glob)
PINS=(
  "containerd=1.6.20*"
  "runc=1.1.5*"
  "containernetworking-plugins=1.1.1*"
  "iptables=1.8.9*"
  "conntrack=1:1.4.7*"
  "buildah=1.28.2*"
  "debootstrap=1.0.128*"
  "redis-server=5:7.0.15*"   # Argo CD's cache (tests/gitops)
)

installed_version() { { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null || true; } | awk '/install ok installed/{print $4}'; }

missing=()
for pin in "${PINS[@]}"; do
  name=${pin%%=*} prefix=${pin#*=}
  version=$(installed_version "$name")
  # shellcheck disable=SC2053  # the right-hand side is a glob on purpose
  if [[ -z "$version" || "$version" != $prefix ]]; then
    missing+=("$pin")
  fi
done

if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing ${missing[*]} and this is not root: run 'sudo $0'"
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Keep maintainer scripts from starting system services (containerd runs with our config).
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  trap 'if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  log "installing ${missing[*]} with apt-get"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { log "FAILED: apt-get install ${missing[*]}"; exit 1; }
fi

for pin in "${PINS[@]}"; do
  name=${pin%%=*} prefix=${pin#*=}
  version=$(installed_version "$name")
  # shellcheck disable=SC2053
  [[ -n "$version" && "$version" == $prefix ]] || { log "FAILED: $name is '${version:-absent}', want $prefix"; exit 1; }
  echo "$name $version"
done
