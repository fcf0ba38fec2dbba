"""Helpers over the Helm chart (charts/optimodel) for tests of any tier.

Why a shared module: the operator's integration tests prove that the chart's RBAC is enough by
running the operator as the chart's ServiceAccount (``install_operator_rbac`` +
``impersonating_kubeconfig``); the chart tests render, lint, install and validate the same
chart. Everything goes through the pinned helm binary (hack/install-binaries.sh), never a
helm found on PATH.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "optimodel"
RBAC_TEMPLATES = ("templates/serviceaccount.yaml", "templates/rbac.yaml")
KUBE_VERSION = "v1.34.4"


def _localcluster():
    if "localcluster" not in sys.modules:
        spec = importlib.util.spec_from_file_location("localcluster", REPO / "hack" / "localcluster.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["localcluster"] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules["localcluster"]


def helm_binary() -> Path:
    """The pinned helm ($HELM overrides)."""
    if os.environ.get("HELM"):
        return Path(os.environ["HELM"])
    return _localcluster().binary_dir() / "helm"


def helm(*args: str, kubeconfig: str | None = None, check: bool = True,
         timeout: float = 180) -> subprocess.CompletedProcess:
    """Run helm; on failure the AssertionError carries helm's stderr."""
    cmd = [str(helm_binary()), *args]
    if kubeconfig:
        cmd += ["--kubeconfig", kubeconfig]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return proc


def set_args(values: dict[str, Any] | None) -> list[str]:
    """``--set-json`` arguments for a (nested) values dict: exact types, no Helm string parsing."""
    import json

    return [a for key, value in (values or {}).items() for a in ("--set-json", f"{key}={json.dumps(value)}")]


def template(values: dict[str, Any] | None = None, *, release: str = "optimodel",
             namespace: str = "optimodel-system", show_only: tuple[str, ...] = ()) -> list[dict]:
    """``helm template`` of the chart; the rendered objects (empty documents dropped).

    ``values`` keys are Helm paths (``"metrics.serviceMonitor.enabled"``) or top-level keys.
    """
    args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    for path in show_only:
        args += ["--show-only", path]
    out = helm(*args, *set_args(values)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def release_name(namespace: str) -> str:
    """Release name of per-namespace test installs: cluster-scoped names stay unique."""
    return f"optimodel-{namespace}"


def service_account_username(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


def install_operator_rbac(cluster, namespace: str, watch_namespaces: list[str] | None) -> str:
    """Apply only the chart's ServiceAccount and RBAC objects; return the SA's username.

    ``namespace`` is where the operator's ServiceAccount lives (the release namespace).
    ``watch_namespaces`` = None or [] renders cluster-wide mode (ClusterRole); a list renders
    namespaced mode (a Role + RoleBinding in each, which must exist). Use the returned
    ``system:serviceaccount:<ns>:<sa>`` as the impersonated user (kubeconfig ``as:``, see
    ``impersonating_kubeconfig``). Cluster-scoped objects are named after the namespace;
    ``uninstall_operator_rbac`` removes them (namespaced ones go with their namespaces).
    """
    release = release_name(namespace)
    objects = template({"watchNamespaces": list(watch_namespaces or [])}, release=release,
                       namespace=namespace, show_only=RBAC_TEMPLATES)
    cluster.kubectl("apply", "--server-side", "--field-manager", "optimodel-tests", "-f", "-",
                    input=yaml.safe_dump_all(objects))
    (sa,) = [o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"]
    return service_account_username(namespace, sa)


def uninstall_operator_rbac(cluster, namespace: str) -> None:
    """Delete the cluster-scoped RBAC objects ``install_operator_rbac`` created for ``namespace``."""
    cluster.kubectl("delete", "clusterrolebinding,clusterrole", "--ignore-not-found", "--wait=false",
                    "-l", f"app.kubernetes.io/instance={release_name(namespace)}")


def token_kubeconfig(cluster, username: str, path: Path, duration: str = "2h") -> str:
    """A kubeconfig that authenticates *as* the ServiceAccount (a TokenRequest token).

    Prefer this to impersonation for running the operator: kopf and the official Python client
    ignore a kubeconfig's ``as:``, whereas a bearer token works for every client.
    """
    _, _, namespace, name = username.split(":", 3)
    token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration", duration).stdout.strip()
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    for user in config.get("users", []):
        user["user"] = {"token": token}
    path.write_text(yaml.safe_dump(config))
    return str(path)


def impersonating_kubeconfig(kubeconfig: str, username: str, path: Path) -> str:
    """A copy of ``kubeconfig`` whose users act as ``username`` (``as:``); returns its path.

    Honoured by kubectl and helm; NOT by kopf or the official Python client (use
    ``token_kubeconfig`` there, or the ``Impersonate-User`` header).
    """
    config = yaml.safe_load(Path(kubeconfig).read_text())
    for user in config.get("users", []):
        user.setdefault("user", {})["as"] = username
    path.write_text(yaml.safe_dump(config))
    return str(path)


def rbac_rules(objects: list[dict]) -> list[tuple[str, str, dict]]:
    """(kind, name, rule) for every rule of every Role/ClusterRole in ``objects``."""
    return [(o["kind"], o["metadata"]["name"], rule) for o in objects
            if o["kind"] in ("Role", "ClusterRole") for rule in o.get("rules") or []]
