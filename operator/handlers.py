"""kopf handler registration, and nothing else: every handler calls ``reconcile``.

Only ``on.event`` handlers are used: the reconcile is level-triggered, so the operator needs no
per-object progress bookkeeping, writes no annotations or finalizers onto the user's objects
(nothing for Argo CD to see as drift), and on restart simply re-lists and re-converges.
Child events (the build Job finishing, Triton pods becoming ready) are routed to their owner.
"""

from __future__ import annotations

import logging

import kopf

from optimodel.api.crd import GROUP, KIND, PLURAL, VERSION
from optimodel.operator.kube import Kube
from optimodel.operator.reconcile import reconcile
from optimodel.operator.settings import OperatorSettings

MANAGED = {"app.kubernetes.io/managed-by": "optimodel-operator"}

_state: dict[str, object] = {}


def _context() -> tuple[Kube, OperatorSettings]:
    if "kube" not in _state:
        _state["settings"] = OperatorSettings.from_env()
        _state["kube"] = Kube()
    return _state["kube"], _state["settings"]  # type: ignore[return-value]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.posting.level = logging.WARNING  # our own Events tell the story; kopf's only on errors
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.execution.max_workers = 8
    # Events of one object arriving within this window are merged into one reconcile. kopf's
    # default (0.1 s) is pure latency for us: reconcile re-reads the world anyway.
    settings.batching.batch_window = 0.02
    # No namespace/CRD scanning: it needs cluster-wide list/watch of namespaces and CRDs, which
    # least-privilege RBAC does not grant. Watched namespaces are exact names from settings.
    settings.scanning.disabled = True
    _context()


@kopf.on.event(GROUP, VERSION, PLURAL)
def model_changed(type: str | None, name: str, namespace: str, **_) -> None:
    if type == "DELETED":
        return
    kube, settings = _context()
    reconcile(kube, settings, namespace, name)


def _owner(meta) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return ref["name"]
    return None


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
def child_changed(meta, namespace: str, **_) -> None:
    owner = _owner(meta)
    if owner:
        kube, settings = _context()
        reconcile(kube, settings, namespace, owner)
