"""Per-namespace access to the artifact store: the scope a namespace's credential must be limited
to, the object-store policy that limits it, and the check that refuses a credential reaching
further.

Builds write ``<root>/<namespace>/<name>/<build-key>/`` and the Triton pods' staging container
reads it back. Both get their credential from a Secret *in the model's namespace* (the chart's
``artifacts.credentialsSecret``), so each namespace can hold its own, limited by the store's
policy to ``<root>/<namespace>/`` (``bucket_policy`` writes that policy; an administrator
attaches it to the namespace's store user, or mints session credentials with it). The operator
never reads or copies credentials: it names the Secret, and passes the scope to the pods.

What optimodel can check without reading the Secret: the builder and the staging container try
to list the *parent* of their scope (``<root>/``, where every namespace's folder is visible).
A credential limited to its namespace is refused; one that lists the root (one store-wide key
copied into every namespace, the single-tenant setup) is refused by us instead, with a message
saying how to scope it, unless the installer opted into sharing (``artifacts.sharedCredentials``,
which makes the operator leave the scope out). The check catches the common mistake; it does
not prove the policy right (a credential that may write everywhere but list only its folder
passes it), which ``tests/builder/test_artifact_access.py`` does against a real MinIO policy.

Standard library only: used by the builder, the stager and the ``optimodel artifact-policy``
command alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

SCOPE_ARG = "--artifact-scope"


class CredentialTooBroad(Exception):
    """The artifact credential can list beyond its namespace's scope (see the module docstring)."""


class OutsideScope(ValueError):
    """A location outside the scope the operator allows."""


def namespace_scope(root: str, namespace: str) -> str:
    """``<root>/<namespace>/``: everything of one namespace, and nothing of another."""
    return f"{root.rstrip('/')}/{namespace}/"


def in_scope(uri: str, scope: str) -> bool:
    """Whether ``uri`` lies inside ``scope`` (a folder URI ending in ``/``), lexically."""
    return uri.startswith(scope) and ".." not in uri[len(scope):].split("/")


def _split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix/")``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri}: not an s3:// URI")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket")
    return bucket, prefix


def bucket_policy(scope: str, *, write: bool = True) -> dict[str, Any]:
    """The S3 IAM policy (AWS IAM, MinIO and other compatibles) that limits a credential to
    ``scope`` (``s3://bucket/<root>/<namespace>/``): list, read and, with ``write``, write and
    delete objects under it, and nothing else. ``write=False`` suits a staging-only credential.
    """
    bucket, prefix = _split_s3(scope)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    object_actions = ["s3:GetObject"] + (["s3:PutObject", "s3:DeleteObject",
                                          "s3:AbortMultipartUpload"] if write else [])
    listing: dict[str, Any] = {"Sid": "ListOwnFolder", "Effect": "Allow", "Action": ["s3:ListBucket"],
                               "Resource": [f"arn:aws:s3:::{bucket}"]}
    if prefix:  # no prefix: the whole bucket is the scope
        listing["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}*"]}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            listing,
            {"Sid": "OwnObjects", "Effect": "Allow", "Action": object_actions,
             "Resource": [f"arn:aws:s3:::{bucket}/{prefix}*"]},
        ],
    }


def policy_json(scope: str, *, write: bool = True) -> str:
    return json.dumps(bucket_policy(scope, write=write), indent=2)


def parent_listing(scope: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of the listing that shows every namespace's folder next to ``scope``'s."""
    bucket, prefix = _split_s3(scope)
    parent = prefix.rstrip("/").rpartition("/")[0]
    return bucket, f"{parent}/" if parent else ""


def check_scope(s3fs_filesystem: Any, scope: str) -> None:
    """Raise ``CredentialTooBroad`` when the filesystem's credential may list ``scope``'s parent.

    ``s3fs_filesystem`` is an ``s3fs.S3FileSystem`` opened with the artifact credential. A
    refusal (``PermissionError``: AccessDenied) is the expected answer. Other errors (store
    unreachable, no such bucket) propagate: nothing was shown either way.
    """
    bucket, prefix = parent_listing(scope)
    try:
        s3fs_filesystem.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix, Delimiter="/", MaxKeys=1)
    except PermissionError:
        return
    shown = f"s3://{bucket}/{prefix}"
    raise CredentialTooBroad(
        f"the artifact credential may list {shown}, where every namespace's engines are: it must be "
        f"limited to {scope} (its namespace's folder). Give this namespace its own credential with "
        f"the policy `optimodel artifact-policy {scope}` prints, or, on a single-tenant cluster, "
        "opt into one shared credential with the chart value artifacts.sharedCredentials=true")


def enforce_scope(uri: str, scope: str, open_s3: Callable[[str], Any]) -> None:
    """What the builder and the stager check before reading anything: ``uri`` lies inside
    ``scope`` (else ``OutsideScope``) and, for ``s3://``, the credential ``open_s3(scope)``
    opens with may not list beyond it (else ``CredentialTooBroad``). Each caller maps the two
    to its own error (a build failure reason, a staging error)."""
    if not in_scope(uri, scope):
        raise OutsideScope(f"{uri} is outside --artifact-scope {scope}")
    if scope.startswith("s3://"):
        check_scope(open_s3(scope), scope)
