"""The only module that talks to the Kubernetes API server.

A thin, generic REST layer over the official client's ``ApiClient``: get / create / merge-patch /
delete any object by apiVersion and kind, with 404 read as "absent" and 409 on create read as
"already there". Everything above this layer works on plain dicts.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from typing import Any

from kubernetes import client, config

from optimodel.api.crd import GROUP, PLURAL, VERSION
from optimodel.operator import diff, metrics

# apiVersion/kind -> plural resource name, for every kind the operator touches.
PLURALS = {
    ("batch/v1", "Job"): "jobs",
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscalers",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobjects",
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitors",
    (f"{GROUP}/{VERSION}", "OptimizedModel"): PLURAL,
}

MERGE_PATCH = "application/merge-patch+json"


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


class Kube:
    """Generic object access; one instance per operator process."""

    def __init__(self, api: client.ApiClient | None = None):
        self.api = api or load_api_client()
        self.instance = socket.gethostname()

    def _call(self, method: str, path: str, body: Any = None, query: list | None = None,
              content_type: str = "application/json") -> Any:
        return self.api.call_api(
            path, method, query_params=query or [], body=body,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            response_type="object", auth_settings=["BearerToken"], _return_http_data_only=True,
            _request_timeout=30,
        )

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

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        try:
            self._call("DELETE", f"{collection_path(api_version, kind, namespace)}/{name}",
                       body={"propagationPolicy": "Background"})
            return True
        except client.ApiException as err:
            if err.status == 404:
                return False
            raise

    def apply(self, desired: dict, not_owned: tuple[tuple[str, ...], ...] = ()) -> str:
        """Read, compare the fields we own, then create / patch / nothing. Returns the action."""
        meta = desired["metadata"]
        key = (desired["apiVersion"], desired["kind"], meta.get("namespace"), meta["name"])
        existing = self.get(*key)
        action = diff.classify(desired, existing, not_owned)
        if action == diff.CREATE:
            if self.create(desired) is None:  # lost a race: compare with the winner
                existing = self.get(*key)
                action = diff.classify(desired, existing, not_owned)
        if action == diff.PATCH:
            self.merge_patch(*key, diff.without(desired, not_owned))
        if action != diff.UNCHANGED:
            metrics.inc("optimodel_child_writes_total", kind=desired["kind"], action=action)
        return action

    def crd_installed(self, name: str) -> bool:
        try:
            self._call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            return True
        except client.ApiException as err:
            if err.status in (403, 404):  # not installed, or we may not look: behave as absent
                return False
            raise

    def patch_model_status(self, namespace: str, name: str, status: dict) -> None:
        self.merge_patch(f"{GROUP}/{VERSION}", "OptimizedModel", namespace, name,
                         {"status": status}, subresource="status")

    def post_event(self, model: dict, type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the OptimizedModel (what ``kubectl describe om`` shows)."""
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
        self.create(event)
