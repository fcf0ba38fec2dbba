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


ARTIFACT_ENV_PREFIX = "OPTIMODEL_ARTIFACT_"
"""Prefix of the artifact credential's variables: the operator passes the artifact Secret with
``envFrom.prefix``, so its ``AWS_*`` keys arrive as ``OPTIMODEL_ARTIFACT_AWS_*`` and never mix
with a model Secret's standard ones (with plain ``envFrom`` the last Secret wins on a duplicate
key). Sources are read with the model's credential only, artifacts with the artifact one only."""


def s3_options(*, artifacts: bool = False) -> dict:
    """fsspec/s3fs options for s3:// URLs: model sources, or (``artifacts``) the artifact store.

    Sources use the standard AWS environment variables (a pod gets them from the model's
    ``credentialsSecret``). The artifact store uses the ``OPTIMODEL_ARTIFACT_``-prefixed ones when
    present, explicitly, so no standard variable (the model's) can change which credential,
    endpoint or region it is; without them (a local run, an ambient cloud identity) it falls back
    to the standard variables. The endpoint of S3-compatible stores comes from
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``. fsspec caches filesystems by constructor
    arguments, which do not include environment credentials, so instances are never reused.
    """
    prefixed = artifacts and bool(os.environ.get(ARTIFACT_ENV_PREFIX + "AWS_ACCESS_KEY_ID"))
    prefix = ARTIFACT_ENV_PREFIX if prefixed else ""

    def get(name: str) -> str | None:
        return os.environ.get(prefix + name) or None

    options: dict = {"skip_instance_cache": True}
    client_kwargs: dict = {}
    endpoint = get("AWS_ENDPOINT_URL_S3") or get("AWS_ENDPOINT_URL")
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if prefixed:
        options.update(key=get("AWS_ACCESS_KEY_ID"), secret=get("AWS_SECRET_ACCESS_KEY"),
                       token=get("AWS_SESSION_TOKEN"))
        region = get("AWS_REGION") or get("AWS_DEFAULT_REGION")
        if region:
            client_kwargs["region_name"] = region
        if not endpoint:  # botocore would otherwise take the model Secret's AWS_ENDPOINT_URL*
            options["config_kwargs"] = {"ignore_configured_endpoint_urls": True}
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options
