"""kopf handler registration, and nothing else: every event becomes a key in the work queue.

Only ``on.event`` handlers are used: the reconcile is level-triggered, so the operator needs no
per-object progress bookkeeping, writes no annotations or finalizers onto the user's objects
(nothing for Argo CD to see as drift), and on restart simply re-lists and re-converges. Retries,
resyncs and one-reconcile-per-model-at-a-time are the work queue's job (``controller``).

Child events (build Jobs, Triton Deployments, their pods) are routed to their model. Children
are watched through a server-side label selector, so the operator streams only its own objects,
not every Job, Deployment and Pod of the cluster.
"""

from __future__ import annotations

import logging

import kopf

from optimodel.api.crd import GROUP, KIND, PLURAL, VERSION
from optimodel.operator.controller import Controller
from optimodel.operator.manifests import MODEL_LABEL

MANAGED_SELECTOR = "app.kubernetes.io/managed-by=optimodel-operator"
CHILD_RESOURCES = (("batch", "v1", "jobs"), ("apps", "v1", "deployments"), ("", "", "pods"))

_controller: list[Controller] = []


def use(controller: Controller) -> None:
    """Route events to ``controller`` (set by ``run`` before kopf starts)."""
    _controller[:] = [controller]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.posting.level = logging.WARNING  # our own Events tell the story; kopf's only on errors
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.execution.max_workers = 4  # handlers only enqueue; reconciles run on our workers
    settings.batching.batch_window = 0.02
    # No namespace/CRD scanning: it needs cluster-wide list/watch of namespaces and CRDs, which
    # least-privilege RBAC does not grant. Watched namespaces are exact names from settings.
    settings.scanning.disabled = True
    for group, version, plural in CHILD_RESOURCES:
        settings.watching.label_selectors[(group, version, plural) if group else plural] = MANAGED_SELECTOR


_seen_models: dict[tuple[str, str], tuple] = {}


def _model_fingerprint(meta) -> tuple:
    """What of a model, when changed, needs a reconcile: the spec (generation), the annotations
    (the rebuild token), labels and deletion. Status-only writes (most of them our own) do not:
    the periodic resync covers a status edited or lost by someone else."""
    return (meta.get("generation"), tuple(sorted((meta.get("annotations") or {}).items())),
            tuple(sorted((meta.get("labels") or {}).items())), meta.get("deletionTimestamp"))


@kopf.on.event(GROUP, VERSION, PLURAL)
def model_changed(type: str | None, name: str, namespace: str, meta, **_) -> None:
    key = (namespace, name)
    if type == "DELETED":
        _seen_models.pop(key, None)
        return
    fingerprint = _model_fingerprint(meta)
    if type is not None and _seen_models.get(key) == fingerprint:
        return  # a status write: nothing a reconcile would act on
    _seen_models[key] = fingerprint
    _controller[0].enqueue(namespace, name)


def _owner(meta) -> str | None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return ref["name"]
    return (meta.get("labels") or {}).get(MODEL_LABEL)  # pods: owned by a Job or ReplicaSet


@kopf.on.event("batch", "v1", "jobs")
@kopf.on.event("apps", "v1", "deployments")
@kopf.on.event("pods")
def child_changed(meta, namespace: str, **_) -> None:
    owner = _owner(meta)
    if owner:
        _controller[0].enqueue(namespace, owner)
