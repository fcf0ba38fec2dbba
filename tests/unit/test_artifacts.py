"""The per-namespace artifact scope and its object-store policy (pure; the policy is exercised
against a real MinIO in tests/builder/test_artifact_access.py)."""

from __future__ import annotations

import pytest

from optimodel import artifacts


def test_scope_is_the_namespace_folder():
    assert artifacts.namespace_scope("s3://b/opt/", "team-a") == "s3://b/opt/team-a/"
    assert artifacts.namespace_scope("pvc://claim", "ml") == "pvc://claim/ml/"


@pytest.mark.parametrize("uri,inside", [
    ("s3://b/opt/a/m/k", True),
    ("s3://b/opt/a/", True),
    ("s3://b/opt/ab/m/k", False),        # a namespace whose name starts like ours
    ("s3://b/opt/b/m/k", False),
    ("s3://b/opt/a/../b/m/k", False),    # lexically inside, climbs out
    ("s3://b/opt/a/m/..", False),
])
def test_in_scope(uri, inside):
    assert artifacts.in_scope(uri, "s3://b/opt/a/") is inside


def test_policy_allows_only_the_scope():
    policy = artifacts.bucket_policy("s3://b/opt/a/")
    listing, objects = policy["Statement"]
    assert listing["Resource"] == ["arn:aws:s3:::b"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["opt/a/", "opt/a/*"]}}
    assert objects["Resource"] == ["arn:aws:s3:::b/opt/a/*"]
    assert "s3:PutObject" in objects["Action"]
    assert artifacts.bucket_policy("s3://b/opt/a/", write=False)["Statement"][1]["Action"] == ["s3:GetObject"]


def test_parent_listing_shows_the_other_namespaces():
    assert artifacts.parent_listing("s3://b/opt/a/") == ("b", "opt/")
    assert artifacts.parent_listing("s3://b/a/") == ("b", "")


def test_only_s3_scopes_have_a_policy():
    with pytest.raises(ValueError, match="not an s3:// URI"):
        artifacts.bucket_policy("pvc://claim/a/")
