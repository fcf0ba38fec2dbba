"""The only module that talks to the Kubernetes API server.

A thin, generic REST layer over the official client's ``ApiClient``: get / list / server-side
apply / merge-patch / delete any object by apiVersion and kind, with 404 read as "absent" and 409
on create read as "already there". Everything above this layer works on plain dicts.

Transient failures are retried here, a bounded number of times, so that one dropped connection
does not cost a whole reconcile: 429 (honouring Retry-After), 5xx, timeouts and connection
resets. What still fails after that propagates, and the work queue retries the reconcile with
backoff. Children are written with server-side apply under one field manager, so fields we stop
setting are removed and fields other managers own (an autoscaler's replicas) are left alone.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import socket
import time
from typing import Any

import urllib3
from kubernetes import client, config

from optimodel.api.crd import GROUP, PLURAL, VERSION
from optimodel.operator import metrics

# apiVersion/kind -> plural resource name, for every kind the operator touches.
PLURALS = {
    ("batch/v1", "Job"): "jobs",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("v1", "Secret"): "secrets",  # create only (manifests.triton_admin_secret)
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitors",
    (f"{GROUP}/{VERSION}", "OptimizedModel"): PLURAL,
}

MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "optimodel-operator"

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
TRANSIENT_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
"""urllib3's HTTPError covers timeouts, resets, refused connections and protocol errors."""

log = logging.getLogger("optimodel.kube")


def retry_delay(attempt: int, retry_after: str | None, base: float = 0.2, cap: float = 5.0) -> float:
    """Seconds before retry ``attempt`` (0-based): the server's Retry-After when it sent one
    (capped), else capped exponential backoff with full jitter."""
    if retry_after:
        try:
            return min(cap, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return random.uniform(0, min(cap, base * (2 ** attempt)))


def describe(err: BaseException) -> str:
    """A one-line, user-readable account of an API failure (for conditions and Events)."""
    if isinstance(err, client.ApiException):
        detail = err.reason or ""
        try:
            detail = json.loads(err.body or "{}").get("message") or detail
        except (ValueError, AttributeError):
            pass
        return f"API server answered {err.status}: {detail}".strip()
    return f"{type(err).__name__}: {err}"


def load_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG)."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))


def collection_path(api_version: str, kind: str, namespace: str | None) -> str:
    plural = PLURALS[(api_version, kind)]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def controlled_by(obj: dict, owner_uid: str) -> bool:
    """True when ``obj``'s controller owner reference points at ``owner_uid``."""
    return any(ref.get("uid") == owner_uid and ref.get("controller")
               for ref in obj.get("metadata", {}).get("ownerReferences") or [])


class Kube:
    """Generic object access; one instance per operator process."""

    _seen: dict[tuple[str, str], str | None]

    def __init__(self, api: client.ApiClient | None = None, attempts: int = 5,
                 identity: str | None = None):
        self.api = api or load_api_client()
        self.instance = identity or socket.gethostname()
        self.attempts = attempts
        self._seen = {}  # (path, manager) -> our last apply's time (for the child-writes metric)
        self._crds: dict[str, tuple[float, bool]] = {}

    def _call(self, method: str, path: str, body: Any = None, query: list | None = None,
              content_type: str = "application/json") -> Any:
        return self._call_with_status(method, path, body, query, content_type)[0]

    def _call_with_status(self, method: str, path: str, body: Any = None, query: list | None = None,
                          content_type: str = "application/json") -> tuple[Any, int]:
        """One API request, retried on transient failures; returns (body, HTTP status).

        Every verb we use is safe to repeat: GET/LIST; apply and merge patches are idempotent;
        a repeated create answers 409 (read as "already there"), a repeated delete 404.
        """
        for attempt in range(self.attempts):
            try:
                data, status, _ = self.api.call_api(
                    path, method, query_params=query or [], body=body,
                    header_params={"Accept": "application/json", "Content-Type": content_type},
                    response_type="object", auth_settings=["BearerToken"],
                    _return_http_data_only=False, _request_timeout=30,
                )
                return data, status
            except client.ApiException as err:
                if err.status not in RETRY_STATUSES or attempt == self.attempts - 1:
                    raise
                delay = retry_delay(attempt, (err.headers or {}).get("Retry-After"))
                reason = f"HTTP {err.status}"
            except TRANSIENT_ERRORS as err:
                if attempt == self.attempts - 1:
                    raise
                delay = retry_delay(attempt, None)
                reason = type(err).__name__
            metrics.inc("optimodel_api_retries_total", reason=reason.split(" ")[0])
            log.debug("%s %s: %s; retry %d in %.2fs", method, path, reason, attempt + 1, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict | None:
        try:
            return self._call("GET", f"{collection_path(api_version, kind, namespace)}/{name}")
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str | None,
             label_selector: str | None = None) -> list[dict]:
        query = [("labelSelector", label_selector)] if label_selector else []
        return self._call("GET", collection_path(api_version, kind, namespace), query=query)["items"]

    def create(self, manifest: dict) -> dict | None:
        """Create; None when it already exists (409): the caller re-reads and compares."""
        meta = manifest["metadata"]
        try:
            return self._call("POST", collection_path(manifest["apiVersion"], manifest["kind"],
                                                      meta.get("namespace")), body=manifest)
        except client.ApiException as err:
            if err.status == 409:
                return None
            raise

    def merge_patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                    patch: dict, subresource: str = "") -> dict | None:
        path = f"{collection_path(api_version, kind, namespace)}/{name}" + (f"/{subresource}" if subresource else "")
        try:
            return self._call("PATCH", path, body=patch, content_type=MERGE_PATCH)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def replace(self, manifest: dict) -> dict:
        """PUT: an optimistic-concurrency update (409 if ``resourceVersion`` is stale)."""
        meta = manifest["metadata"]
        path = f"{collection_path(manifest['apiVersion'], manifest['kind'], meta.get('namespace'))}/{meta['name']}"
        return self._call("PUT", path, body=manifest)

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        try:
            self._call("DELETE", f"{collection_path(api_version, kind, namespace)}/{name}",
                       body={"propagationPolicy": "Background"})
            return True
        except client.ApiException as err:
            if err.status == 404:
                return False
            raise

    def apply(self, desired: dict, manager: str = FIELD_MANAGER) -> tuple[dict, str]:
        """Server-side apply ``desired`` as the operator's field manager; (live object, action).

        ``force``: the operator is the controller of its children, so its fields win over a
        conflicting manual edit (drift is repaired). Fields it no longer sets are removed; fields
        only others set are left alone. An unchanged object is not written (same
        resourceVersion), so a steady-state reconcile costs reads only.
        """
        meta = desired["metadata"]
        path = f"{collection_path(desired['apiVersion'], desired['kind'], meta.get('namespace'))}/{meta['name']}"
        before = self._seen.get((path, manager))
        live, status = self._call_with_status(
            "PATCH", path, body=desired, content_type=APPLY_PATCH,
            query=[("fieldManager", manager), ("force", "true")])
        # Our manager's managedFields timestamp moves only when our apply changed something,
        # unlike resourceVersion, which other controllers' status writes move too.
        stamp = next((e.get("time") for e in live["metadata"].get("managedFields") or []
                      if e.get("manager") == manager and e.get("operation") == "Apply"), None)
        self._seen[(path, manager)] = stamp
        action = "create" if status == 201 else ("patch" if before and before != stamp else "unchanged")
        if action != "unchanged":
            metrics.inc("optimodel_child_writes_total", kind=desired["kind"], action=action)
        return live, action

    def delete_owned(self, api_version: str, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
        """Delete an object only if ``owner_uid`` controls it (and only that very object: the
        uid precondition stops a delete of a same-named successor). False if absent or not ours."""
        existing = self.get(api_version, kind, namespace, name)
        if existing is None or not controlled_by(existing, owner_uid):
            return False
        try:
            self._call("DELETE", f"{collection_path(api_version, kind, namespace)}/{name}",
                       body={"propagationPolicy": "Background",
                             "preconditions": {"uid": existing["metadata"]["uid"]}})
            return True
        except client.ApiException as err:
            if err.status in (404, 409):
                return False
            raise

    def crd_installed(self, name: str, max_age: float = 30.0) -> bool:
        """Is this CRD installed? Cached for ``max_age`` seconds: every reconcile asks, and an
        add-on (KEDA, the Prometheus Operator) is installed rarely."""
        cached = self._crds.get(name)
        if cached and time.monotonic() - cached[0] < max_age:
            return cached[1]
        try:
            self._call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            found = True
        except client.ApiException as err:
            if err.status not in (403, 404):  # not installed, or we may not look: behave as absent
                raise
            found = False
        self._crds[name] = (time.monotonic(), found)
        return found

    def patch_model_status(self, namespace: str, name: str, status: dict) -> None:
        self.merge_patch(f"{GROUP}/{VERSION}", "OptimizedModel", namespace, name,
                         {"status": status}, subresource="status")

    def post_event(self, model: dict, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the OptimizedModel (what ``kubectl describe om`` shows).

        Best effort, as client-go's recorder: status already says the same, and failing the
        reconcile over an Event would retry work that is done (the transition is not re-announced).
        """
        meta = model["metadata"]
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": model["apiVersion"], "kind": model["kind"],
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta["uid"], "resourceVersion": meta.get("resourceVersion")},
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "optimodel-operator"},
            "reportingComponent": "optimodel.dev/operator",
            "reportingInstance": self.instance[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.create(event)
        except (client.ApiException, *TRANSIENT_ERRORS) as err:
            log.warning("Event %s on %s/%s not recorded: %s", reason, meta["namespace"], meta["name"],
                        describe(err))
