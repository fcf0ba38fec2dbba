"""KEDA v2.21.0 (keda-operator and keda-adapter) run as host processes against the local cluster.

Why host processes rather than KEDA's Deployments: the end-to-end tier builds third-party
components from their pinned Go modules (``hack/install-autoscalers.sh``) instead of pulling
images, and runs them beside the control plane, as ``clusterstack.py`` runs prometheus-adapter.
The operator reaches the API server through the admin kubeconfig and Prometheus on the host; the
aggregation layer reaches the adapter through a selector-less Service whose Endpoints name a host
address that is not loopback (the API server refuses 127.0.0.1 there): the real node's by default.

What KEDA's Deployments get from a pod is done here by hand (flags read from
``cmd/operator/main.go`` and ``cmd/adapter/main.go`` of v2.21.0):

- mTLS on the operator's gRPC metrics service, which the adapter queries. In a cluster,
  ``--enable-cert-rotation`` stores a CA and a certificate in a Secret, the kubelet mounts it
  and the operator exits so that its pod restarts with it. Nothing mounts Secrets on the host,
  so rotation stays off: we issue a KEDA CA, a serving certificate for the operator (IP SAN
  127.0.0.1, the address the adapter dials) and a client certificate for the adapter. Each side
  reads ``ca.crt``/``tls.crt``/``tls.key`` from its ``--cert-dir``.
- The namespace environment: ``WATCH_NAMESPACE`` must be set ("" = all namespaces);
  ``KEDA_CLUSTER_OBJECT_NAMESPACE`` is otherwise read from the service-account mount.
- Explicit listen addresses: the defaults (``:8080``, ``:8081``, ``:9666``) are on every
  interface and would collide with other host processes. (The adapter's own /metrics ``--port``
  has no address flag: it gets a free port, on every interface.)
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pki  # hack/pki.py
import realnode  # hack/realnode.py
from localcluster import free_port

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "keda"
SERVICE = "keda-metrics-apiserver"
API_SERVICE = "v1beta1.external.metrics.k8s.io"


@dataclass
class Keda:
    """The two KEDA processes and their workdir (certificates, logs)."""

    operator: subprocess.Popen | None
    adapter: subprocess.Popen | None
    workdir: Path
    url: str  # the adapter's https://host:port
    api_client: object = None  # kubernetes.client.ApiClient, to unregister the APIService

    def log_tail(self, n: int = 3000) -> str:
        logs = [(name, self.workdir / f"{name}.log") for name in ("keda-operator", "keda-adapter")]
        return "\n".join(f"--- {name} ---\n{path.read_text(errors='replace')[-n:]}"
                         for name, path in logs if path.exists())

    def stop(self) -> None:
        """Unregister the APIService, kill both process groups and remove the workdir.

        An APIService left pointing at a dead adapter makes discovery of its group fail, and the
        namespace controller cannot finish deleting any namespace while discovery fails.
        """
        if self.api_client is not None:
            from kubernetes import client

            try:
                client.ApiregistrationV1Api(self.api_client).delete_api_service(
                    API_SERVICE, _request_timeout=5)
            except Exception:  # noqa: BLE001 - already gone, or the cluster is down: nothing to undo
                pass
        procs = [p for p in (self.adapter, self.operator) if p is not None]
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _spawn(name: str, cmd: list[str], workdir: Path, env: dict[str, str]) -> subprocess.Popen:
    """A process in its own session (so stop() kills its group), logging to ``<name>.log``."""
    with open(workdir / f"{name}.log", "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=workdir, env={**os.environ, **env})


def _certificates(workdir: Path) -> tuple[Path, Path]:
    """The operator's and the adapter's cert dirs for KEDA's gRPC mTLS (see the module doc)."""
    ca_dir, operator_dir, adapter_dir = (workdir / d for d in ("ca", "operator-certs", "adapter-certs"))
    for d in (ca_dir, operator_dir, adapter_dir):
        d.mkdir()
    ca = pki.certificate_authority(ca_dir, "ca", "keda-local-ca")
    pki.issue(ca, operator_dir, "tls", "keda-operator", ips=("127.0.0.1",), server=True)
    pki.issue(ca, adapter_dir, "tls", "keda-adapter")
    for d in (operator_dir, adapter_dir):
        shutil.copy(ca.cert, d / "ca.crt")
    return operator_dir, adapter_dir


def _create_or_replace(api, kind: str, body: dict, *namespace: str, replace: bool = True) -> None:
    """Create; or replace what an earlier run left (a new port, a newer CRD schema), or keep it."""
    from kubernetes import client

    name = body["metadata"]["name"]
    try:
        getattr(api, f"create_{kind}")(*namespace, body)
    except client.ApiException as err:
        if err.status != 409:
            raise
        if not replace:
            return
        current = getattr(api, f"read_{kind}")(name, *namespace)
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        getattr(api, f"replace_{kind}")(name, *namespace, body)


def _install_crds(api_client, crd_dir: Path, deadline: float) -> None:
    """KEDA's CRDs of the same release, Established before the operator starts watching them."""
    import yaml  # PyYAML: a dependency of the kubernetes client
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api_client)
    names = []
    for path in sorted(crd_dir.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if crd:
                _create_or_replace(ext, "custom_resource_definition", crd)
                names.append(crd["metadata"]["name"])
    for name in names:
        while not any(c.type == "Established" and c.status == "True"
                      for c in ext.read_custom_resource_definition(name).status.conditions or []):
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} not Established")
            time.sleep(0.2)


def _register(core, reg, host: str, port: int) -> None:
    """Point external.metrics.k8s.io at the adapter, as clusterstack.py does for prometheus-adapter:
    a selector-less Service, Endpoints naming host:port (the aggregator picks the endpoint port by
    the Service port's name), and insecureSkipTLSVerify for the adapter's self-signed certificate."""
    _create_or_replace(core, "namespaced_service", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE},
        "spec": {"ports": [{"name": "https", "port": 443}]}}, NAMESPACE, replace=False)
    _create_or_replace(core, "namespaced_endpoints", {
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": SERVICE},
        "subsets": [{"addresses": [{"ip": host}], "ports": [{"name": "https", "port": port}]}]}, NAMESPACE)
    _create_or_replace(reg, "api_service", {
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": API_SERVICE},
        "spec": {"service": {"name": SERVICE, "namespace": NAMESPACE, "port": 443},
                 "group": "external.metrics.k8s.io", "version": "v1beta1", "insecureSkipTLSVerify": True,
                 "groupPriorityMinimum": 100, "versionPriority": 100}})


def _ready(url: str, port: int) -> bool:
    """The operator's readyz answers 200 and its gRPC metrics service accepts connections."""
    try:
        with urllib.request.urlopen(url, timeout=2), socket.create_connection(("127.0.0.1", port), 2):
            return True  # urlopen raises HTTPError (an OSError) on anything but 2xx
    except OSError:
        return False


def start_keda(cluster_state, api_client, host: str = realnode.NODE_IP, timeout: float = 120.0) -> Keda:
    """Start keda-operator and keda-adapter, register v1beta1.external.metrics.k8s.io, install
    KEDA's CRDs; return when the APIService is Available and the operator is running.

    ``host`` is the address the adapter listens on and the Endpoints name: on this machine,
    reachable by the API server, and not loopback.
    """
    from kubernetes import client

    deadline = time.monotonic() + timeout
    bins = Path(subprocess.run([str(REPO / "hack" / "install-autoscalers.sh")], check=True,
                               capture_output=True, text=True).stdout.strip())
    core, reg = client.CoreV1Api(api_client), client.ApiregistrationV1Api(api_client)
    _install_crds(api_client, bins / "crds", deadline)
    _create_or_replace(core, "namespace", {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": NAMESPACE}}, replace=False)
    grpc_port, probe_port, secure_port, metrics_port = (free_port() for _ in range(4))
    keda = Keda(None, None, Path(tempfile.mkdtemp(prefix="optimodel-keda-")),
                f"https://{host}:{secure_port}", api_client)
    try:
        operator_certs, adapter_certs = _certificates(keda.workdir)
        kubeconfig = cluster_state.kubeconfig
        env = {"WATCH_NAMESPACE": "", "POD_NAMESPACE": NAMESPACE,
               "KEDA_CLUSTER_OBJECT_NAMESPACE": NAMESPACE}
        logging = ["--zap-encoder=console", "--zap-log-level=info"]
        keda.operator = _spawn("keda-operator", [
            str(bins / "keda-operator"), f"--kubeconfig={kubeconfig}", "--leader-elect=false",
            f"--metrics-service-bind-address=127.0.0.1:{grpc_port}", f"--cert-dir={operator_certs}",
            f"--health-probe-bind-address=127.0.0.1:{probe_port}", "--metrics-bind-address=0",
            f"--ca-dir={keda.workdir / 'custom-ca'}", *logging], keda.workdir, env)
        keda.adapter = _spawn("keda-adapter", [
            str(bins / "keda-adapter"), f"--kubeconfig={kubeconfig}", f"--lister-kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={host}", f"--secure-port={secure_port}", f"--cert-dir={adapter_certs}",
            f"--metrics-service-address=127.0.0.1:{grpc_port}", f"--port={metrics_port}", *logging],
            keda.workdir, env)
        _register(core, reg, host, secure_port)
        probe, available, status = f"http://127.0.0.1:{probe_port}/readyz", False, None
        while time.monotonic() < deadline:
            if keda.operator.poll() is not None or keda.adapter.poll() is not None:
                raise RuntimeError(f"KEDA exited:\n{keda.log_tail()}")
            status = reg.read_api_service(API_SERVICE).status
            available = any(c.type == "Available" and c.status == "True" for c in (status.conditions or []))
            if available and _ready(probe, grpc_port):
                return keda
            time.sleep(0.5)
        raise RuntimeError(f"KEDA not ready in {timeout:.0f}s (APIService Available={available}: {status})"
                           f"\n{keda.log_tail()}")
    except BaseException:
        keda.stop()
        raise
