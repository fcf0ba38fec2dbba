#!/usr/bin/env bash
# Build and cache a pinned MinIO server (a real S3-compatible object store) from its Go module, and
# print the binary's path. Tests use it for every s3:// path: model sources, build outputs and
# repository staging, with credentials passed only through the standard AWS environment variables.
set -euo pipefail
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
CACHE="${OPTIMODEL_CACHE:-$HOME/.cache/optimodel}"
bin="$CACHE/bin/minio-$MINIO_VERSION"
if [ ! -x "$bin/minio" ]; then
  echo "[install-minio] building minio $MINIO_VERSION (a few minutes cold)" >&2
  mkdir -p "$bin"
  GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod GOBIN="$bin" \
    go install -trimpath -ldflags "-s -w" "github.com/minio/minio@$MINIO_VERSION" \
    || { echo "[install-minio] FAILED: minio $MINIO_VERSION did not build" >&2; exit 1; }
fi
echo "$bin/minio"
