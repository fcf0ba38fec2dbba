"""Storage URIs shared by the builder (reads models, writes artifacts) and the stager (reads
artifacts): how ``pvc://`` maps onto a mounted claim, and how ``s3://`` filesystems are opened.

Kept in one place so a pod mounting a claim and a process reading it agree on the path, and so
every s3:// client honours the same endpoint and credential rules. Standard library only; fsspec
is imported by the callers that open remote filesystems.
"""

from __future__ import annotations

import os
from pathlib import Path

PVC_ROOT_ENV = "OPTIMODEL_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"


def pvc_path(uri: str) -> Path:
    """``pvc://claim/path`` -> ``$OPTIMODEL_PVC_ROOT/claim/path`` (the operator mounts claims there).

    The path is normalized (``.``, ``..`` and repeated slashes folded, lexically: no symlink is
    followed) and must stay inside ``<root>/<claim>/``: ``pvc://claim/../../x`` would otherwise
    read another claim's mount or the container's filesystem.

    Raises ``ValueError`` when the URI names no claim or its path escapes the claim.
    """
    rest = uri[len("pvc://"):].strip("/")
    claim, _, sub = rest.partition("/")
    if not claim:
        raise ValueError(f"{uri}: pvc:// URIs need a claim name (pvc://claim/path)")
    if claim in (".", ".."):
        raise ValueError(f"{uri}: {claim!r} is not a claim name (pvc://claim/path)")
    root = os.path.abspath(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT))
    base = os.path.normpath(os.path.join(root, claim))
    path = os.path.normpath(base + os.sep + sub) if sub else base  # sub may start with '/'
    if path != base and not path.startswith(base + os.sep):
        raise ValueError(f"{uri}: the path leaves the claim: it resolves outside {base}/ "
                         "(no '..' segments that climb above pvc://<claim>/)")
    return Path(path)


def s3_options() -> dict:
    """fsspec/s3fs options for s3:// URLs.

    Credentials come from the standard AWS environment variables (a pod gets them from a Secret
    reference); the endpoint of S3-compatible stores from ``AWS_ENDPOINT_URL_S3`` or
    ``AWS_ENDPOINT_URL``. fsspec caches filesystems by constructor arguments, which do not
    include environment credentials, so instances are never reused across credentials.
    """
    options: dict = {"skip_instance_cache": True}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    return options
