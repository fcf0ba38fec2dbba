"""The build key: one hash that decides whether an engine must be (re)built.

sha256 over the model source identity, the optimization spec, the GPU product, the builder
version and image, and the user's rebuild token. The operator computes it, names the Job after it
and passes it down (``--build-key``); the builder recomputes it from the spec and its own version
and refuses a mismatch (``BuildKeyMismatch``: operator and builder disagree, i.e. version skew),
so an engine is never filed under a key that another builder would compute differently. Serving
and autoscaling settings are not part of it, so editing them never rebuilds.
"""

from __future__ import annotations

import hashlib
import json

from optimodel import __version__
from optimodel.api.spec import BuildSpec

BUILDER_VERSION = __version__
"""Bumped with the package; a builder change that alters engines must change this."""


def build_key(spec: BuildSpec, builder_version: str = BUILDER_VERSION) -> str:
    """Hex sha256 of the canonical JSON of what shapes the engine.

    Defaults are expanded by the model before hashing, so a spec that spells out a default and
    one that omits it give the same key. Credentials are identity-irrelevant and excluded.
    """
    source = spec.model.to_wire()
    source.pop("credentialsSecret", None)
    identity = {
        "model": source,
        "optimization": spec.optimization.to_wire(),
        "gpuProduct": spec.gpu_product or "",
        "builderVersion": builder_version,
    }
    for optional, wire in ((spec.builder_image, "builderImage"), (spec.rebuild, "rebuild")):
        if optional:  # left out when unset: keys of specs without them stay what they were
            identity[wire] = optional
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
