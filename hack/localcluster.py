#!/usr/bin/env python3
"""A real Kubernetes control plane on 127.0.0.1, with kwok fake nodes, from cached binaries.

Why not kind/minikube/envtest: no container engine and no download site here. The binaries
come from ``hack/install-binaries.sh`` (built from Go modules, cached by version). This module
starts etcd, kube-apiserver (token auth, RBAC, Pod Security admission on), kube-controller-manager
(garbage collector, Job and Deployment controllers, ...), kube-scheduler and kwok, then registers
fake node pools: two GPU pools with distinct ``nvidia.com/gpu.product`` labels and a GPU taint,
and a CPU pool. kwok drives Deployment pods to Running/Ready and Job pods to Succeeded, except
pods labelled ``app.kubernetes.io/component=builder``: there is no real kubelet to run the
builder, so a test (or a person) plays the kubelet for those by writing their status.

With ``--real-node`` a real kubelet node joins as well (``hack/realnode.py``: containerd, runc,
bridge CNI, kube-proxy; the project's images from ``hack/images.py`` imported into it). The API
server then listens on the node's bridge address so that pods reach it through the
``kubernetes`` Service; without it, on 127.0.0.1 only.

Used by ``make dev-cluster`` / ``make dev-cluster-down`` and by the pytest session fixtures.
Standard library only, so it runs before any virtual environment exists.

    python3 hack/localcluster.py up   [--state DIR] [--real-node]   # prints the kubeconfig path
    python3 hack/localcluster.py down [--state DIR]
    python3 hack/localcluster.py restart COMPONENT [--down-seconds S] [--state DIR]   # kill -9, start again
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import pki  # noqa: E402  (hack/pki.py)
import realnode  # noqa: E402  (hack/realnode.py)

KUBE_VERSION = os.environ.get("KUBE_VERSION", "v1.34.4")
CACHE = Path(os.environ.get("OPTIMODEL_CACHE", Path.home() / ".cache" / "optimodel"))
DEFAULT_STATE = CACHE / "dev-cluster"
BUILDER_POD_SELECTOR = "app.kubernetes.io/component=builder"

SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
NODE_POOLS = [
    # (pool, count, gpu product or None, gpus per node, compute capability)
    ("h100", 2, "NVIDIA-H100-80GB-HBM3", 8, "9.0"),
    ("l4", 2, "NVIDIA-L4", 4, "8.9"),
    ("cpu", 2, None, 0, None),
]


def log(msg: str) -> None:
    print(f"[localcluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def binary_dir() -> Path:
    return CACHE / "bin" / f"kube-{KUBE_VERSION}"


def ensure_binaries(real_node: bool = False) -> Path:
    """Build missing binaries (no-op when cached). Fails loudly naming what is missing."""
    needed = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl"]
    if real_node:
        needed += ["kubelet", "kube-proxy"]
    bdir = binary_dir()
    if all((bdir / n).exists() for n in needed):
        return bdir
    log("control-plane binaries missing; running hack/install-binaries.sh")
    subprocess.run([str(HERE / "install-binaries.sh")], check=True)
    missing = [n for n in needed if not (bdir / n).exists()]
    if missing:
        raise RuntimeError(f"binaries still missing after install: {', '.join(missing)} in {bdir}")
    return bdir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ClusterState:
    state_dir: str
    kubeconfig: str
    server: str
    token: str
    pids: dict[str, int] = field(default_factory=dict)
    ready_seconds: float = 0.0
    real_node: bool = False
    images: dict[str, str] = field(default_factory=dict)  # image name -> ref on the real node
    # How each process was started, for restart(): its command line and its log file.
    commands: dict[str, list[str]] = field(default_factory=dict)
    log_files: dict[str, str] = field(default_factory=dict)

    def save(self) -> None:
        Path(self.state_dir, "cluster.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> "ClusterState | None":
        path = state_dir / "cluster.json"
        if not path.exists():
            return None
        known = {f.name for f in fields(cls)}  # states saved by older or newer versions load too
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


class ApiClient:
    """Just enough HTTPS to wait for readiness and create nodes (stdlib only)."""

    def __init__(self, server: str, token: str):
        self.server, self.token = server, token
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE

    def request(self, method: str, path: str, body: dict | None = None,
                content_type: str = "application/json") -> tuple[int, dict | str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
                text = resp.read().decode()
                status = resp.status
        except urllib.error.HTTPError as err:
            text, status = err.read().decode(), err.code
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text


def _write_kubeconfig(path: Path, server: str, token: str, ca_file: Path) -> None:
    # JSON is valid YAML; kubectl and the Python client both read it.
    path.write_text(json.dumps({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "optimodel-local",
                      "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "optimodel-local",
                      "context": {"cluster": "optimodel-local", "user": "admin"}}],
        "current-context": "optimodel-local",
    }, indent=2))


def _node_manifest(pool: str, index: int, product: str | None, gpus: int, cc: str | None) -> dict:
    labels = {
        "type": "kwok",
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": f"kwok-{pool}-{index}",
        "optimodel.dev/pool": pool,
    }
    allocatable = {"cpu": "32", "memory": "256Gi", "pods": "110", "ephemeral-storage": "1Ti"}
    spec: dict = {}
    if product:
        labels.update({
            "nvidia.com/gpu.product": product,
            "nvidia.com/gpu.count": str(gpus),
            "nvidia.com/gpu.present": "true",
        })
        if cc:
            major, minor = cc.split(".")
            labels.update({"nvidia.com/gpu.compute.major": major, "nvidia.com/gpu.compute.minor": minor})
        allocatable["nvidia.com/gpu"] = str(gpus)
        spec["taints"] = [GPU_TAINT]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": f"kwok-{pool}-{index}",
            "labels": labels,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": spec,
        "status": {"allocatable": allocatable, "capacity": dict(allocatable)},
    }


def _wait(what: str, check, timeout: float, procs: dict[str, subprocess.Popen], logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                tail = (logs / f"{name}.log").read_text()[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{tail}")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}; logs in {logs}")


def make_pki(pki_dir: Path, host: str, real_node: bool) -> dict[str, pki.KeyPair]:
    """The cluster CA, the API server's serving certificate, the aggregation layer's front proxy,
    and (with a real node) the kubelet's, kube-proxy's and the API server's kubelet-client
    certificates."""
    ca = pki.certificate_authority(pki_dir, "ca", "optimodel-local-ca")
    front_ca = pki.certificate_authority(pki_dir, "front-proxy-ca", "optimodel-front-proxy-ca")
    pairs = {
        "ca": ca,
        "front-proxy-ca": front_ca,
        "apiserver": pki.issue(ca, pki_dir, "apiserver", "kube-apiserver", server=True,
                               dns=("localhost", "kubernetes", "kubernetes.default",
                                    "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"),
                               ips=tuple(sorted({"127.0.0.1", host, KUBERNETES_SERVICE_IP}))),
        "front-proxy-client": pki.issue(front_ca, pki_dir, "front-proxy-client", "front-proxy-client"),
    }
    if real_node:
        pairs["kubelet"] = pki.issue(ca, pki_dir, "kubelet", f"system:node:{realnode.NODE_NAME}",
                                     organizations=("system:nodes",))
        pairs["kube-proxy"] = pki.issue(ca, pki_dir, "kube-proxy", "system:kube-proxy")
        pairs["apiserver-kubelet-client"] = pki.issue(ca, pki_dir, "apiserver-kubelet-client",
                                                      "kube-apiserver-kubelet-client",
                                                      organizations=("system:masters",))
    return pairs


def node_images() -> dict[str, str]:
    """{name: ref} of the project's images, built by hack/images.py when missing."""
    import images  # hack/images.py

    return {name: image.ref for name, image in images.build(list(images.all_images())).items()}


def up(state_dir: Path, timeout: float = 120.0, real_node: bool = False) -> ClusterState:
    """Start the control plane and fake nodes (and a real one); return when pods can run."""
    t0 = time.monotonic()
    bdir = ensure_binaries(real_node)
    existing = ClusterState.load(state_dir)
    if existing and healthy(existing) and existing.real_node == real_node:
        log(f"reusing running cluster at {existing.server}")
        return existing
    if existing:
        down(state_dir)
    built_images = node_images() if real_node else {}
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    pki_dir = state_dir / "pki"
    pki_dir.mkdir(exist_ok=True)
    if real_node:
        realnode.prepare_host(state_dir)  # the bridge carries the address the API server binds
    host = realnode.NODE_IP if real_node else "127.0.0.1"
    certs = make_pki(pki_dir, host, real_node)

    token = os.urandom(16).hex()
    (pki_dir / "tokens.csv").write_text(f'{token},admin,admin-uid,"system:masters"\n')
    sa_key = pki_dir / "sa.key"
    subprocess.run(["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True,
                   capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(sa_key), "-pubout", "-out", str(pki_dir / "sa.pub")],
                   check=True, capture_output=True)

    etcd_port, etcd_peer, api_port, kwok_port = free_port(), free_port(), free_port(), free_port()
    server = f"https://{host}:{api_port}"
    kubeconfig = state_dir / "kubeconfig"
    kwok_config = state_dir / "kwok.yaml"
    kwok_config.write_text(
        "apiVersion: config.kwok.x-k8s.io/v1alpha1\n"
        "kind: KwokConfiguration\n"
        "options:\n"
        f"  disregardStatusWithLabelSelector: {BUILDER_POD_SELECTOR}\n"
    )
    apiserver = [
        str(bdir / "kube-apiserver"),
        "--etcd-servers", f"http://127.0.0.1:{etcd_port}",
        "--bind-address", host, "--advertise-address", host,
        "--secure-port", str(api_port), "--cert-dir", str(pki_dir),
        "--tls-cert-file", str(certs["apiserver"].cert),
        "--tls-private-key-file", str(certs["apiserver"].key),
        "--client-ca-file", str(certs["ca"].cert),
        "--token-auth-file", str(pki_dir / "tokens.csv"),
        "--authorization-mode", "Node,RBAC",
        "--enable-admission-plugins", "NodeRestriction",
        "--service-account-issuer", "https://kubernetes.default.svc",
        "--service-account-key-file", str(pki_dir / "sa.pub"),
        "--service-account-signing-key-file", str(sa_key),
        "--service-cluster-ip-range", SERVICE_CIDR,
        # The aggregation layer (custom.metrics.k8s.io from prometheus-adapter or KEDA).
        "--requestheader-client-ca-file", str(certs["front-proxy-ca"].cert),
        "--requestheader-allowed-names", "front-proxy-client",
        "--requestheader-username-headers", "X-Remote-User",
        "--requestheader-group-headers", "X-Remote-Group",
        "--requestheader-extra-headers-prefix", "X-Remote-Extra-",
        "--proxy-client-cert-file", str(certs["front-proxy-client"].cert),
        "--proxy-client-key-file", str(certs["front-proxy-client"].key),
        "--enable-aggregator-routing=true",
        # Like real clusters: privileged pods are legal API objects, and Pod Security
        # admission (enabled by default) is what refuses them per namespace.
        "--allow-privileged=true",
        "--profiling=false", "--v", "1",
    ]
    if real_node:
        # Pods reach the API server through the `kubernetes` Service, whose endpoint is the
        # advertised node address; the API server reaches kubelets by their InternalIP.
        apiserver += [
            "--kubelet-client-certificate", str(certs["apiserver-kubelet-client"].cert),
            "--kubelet-client-key", str(certs["apiserver-kubelet-client"].key),
            "--kubelet-preferred-address-types", "InternalIP",
        ]
    else:
        apiserver += ["--endpoint-reconciler-type", "none"]
    commands = {
        "etcd": [
            str(bdir / "etcd"), "--name", "default", "--data-dir", str(state_dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"default=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync", "--log-level", "warn",
        ],
        "kube-apiserver": apiserver,
    }
    procs: dict[str, subprocess.Popen] = {}
    state = ClusterState(str(state_dir), str(kubeconfig), server, token, real_node=real_node)

    def start(name: str, cmd: list[str]) -> None:
        out = open(logs / f"{name}.log", "ab")
        procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        state.pids[name] = procs[name].pid
        state.commands[name] = list(cmd)
        state.log_files[name] = str(logs / f"{name}.log")
        state.save()

    def alive() -> None:
        for name, proc in procs.items():
            if proc.poll() is not None:
                tail = (logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    try:
        start("etcd", commands["etcd"])
        start("kube-apiserver", commands["kube-apiserver"])
        api = ApiClient(server, token)
        _wait("kube-apiserver /readyz", lambda: api.request("GET", "/readyz")[0] == 200,
              timeout, procs, logs)
        log(f"kube-apiserver ready after {time.monotonic() - t0:.1f}s")
        _write_kubeconfig(kubeconfig, server, token, certs["ca"].cert)
        start("kube-controller-manager", [
            str(bdir / "kube-controller-manager"), "--kubeconfig", str(kubeconfig),
            "--leader-elect=false", "--secure-port", "0",
            "--service-account-private-key-file", str(sa_key),
            "--root-ca-file", str(certs["ca"].cert),
            "--use-service-account-credentials=false",
            "--controllers", "*,-nodeipam,-service-lb-controller,-route,-cloud-node-lifecycle",
            "--concurrent-gc-syncs", "10",
            # Autoscalers react within seconds in tests and demos (default 15 s).
            "--horizontal-pod-autoscaler-sync-period", "5s",
            "--v", "1",
        ])
        start("kube-scheduler", [
            str(bdir / "kube-scheduler"), "--kubeconfig", str(kubeconfig),
            "--leader-elect=false", "--secure-port", "0", "--v", "1",
        ])
        start("kwok", [
            str(bdir / "kwok"), "--kubeconfig", str(kubeconfig), "--config", str(kwok_config),
            "--manage-all-nodes=false", "--manage-nodes-with-label-selector", "type=kwok",
            "--server-address", f"127.0.0.1:{kwok_port}", "--cidr", "10.244.0.1/16",
            "--node-lease-duration-seconds", "40",
        ])
        for pool, count, product, gpus, cc in NODE_POOLS:
            for i in range(count):
                status, body = api.request("POST", "/api/v1/nodes",
                                           _node_manifest(pool, i, product, gpus, cc))
                if status not in (201, 409):
                    raise RuntimeError(f"creating node kwok-{pool}-{i}: HTTP {status}: {body}")
        if real_node:
            import images  # hack/images.py

            state.images = built_images
            realnode.start(state_dir, bdir, certs, server, start, free_port, built_images["pause"],
                           list(built_images.values()), images.export, alive)

        expected = sum(p[1] for p in NODE_POOLS) + (1 if real_node else 0)

        def nodes_ready() -> bool:
            _, body = api.request("GET", "/api/v1/nodes")
            items = body.get("items", []) if isinstance(body, dict) else []
            ready = [n for n in items for c in n.get("status", {}).get("conditions", [])
                     if c["type"] == "Ready" and c["status"] == "True"]
            return len(ready) == expected

        _wait(f"{expected} nodes Ready", nodes_ready, timeout, procs, logs)
        _wait("controller-manager (default ServiceAccount)",
              lambda: api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
              timeout, procs, logs)
    except BaseException:
        down(state_dir, keep_logs=True)
        raise
    state.ready_seconds = round(time.monotonic() - t0, 2)
    state.save()
    log(f"control plane {KUBE_VERSION} ready in {state.ready_seconds:.1f}s "
        f"({sum(p[1] for p in NODE_POOLS)} kwok nodes{', 1 real node' if real_node else ''}); "
        f"kubeconfig: {kubeconfig}")
    return state


def healthy(state: ClusterState) -> bool:
    try:
        return ApiClient(state.server, state.token).request("GET", "/readyz")[0] == 200
    except (OSError, urllib.error.URLError):
        return False


def down(state_dir: Path, keep_logs: bool = False) -> None:
    """Stop every process the cluster started and remove its state."""
    state = ClusterState.load(state_dir)
    if state and state.real_node:
        api = ApiClient(state.server, state.token)
        request = (lambda method, path, body, ctype="application/json":
                   api.request(method, path, body, ctype)) if healthy(state) else None
        realnode.stop(state_dir, request, state.pids)
    elif realnode.HOST_RECORD.is_file() and str(state_dir) in realnode.HOST_RECORD.read_text():
        realnode.cleanup_host(state_dir)  # a node whose cluster state was lost mid-start
    if state:
        # Reverse start order: clients first, etcd last.
        for name, pid in reversed(list(state.pids.items())):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 15
        for name, pid in state.pids.items():
            while realnode.process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if realnode.process_alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                # SIGKILL is delivered asynchronously: return only once the process is gone, or
                # a caller may find it still running (seen with a kube-apiserver that had not
                # finished its graceful shutdown in 15 s on a loaded 2-core machine).
                killed = time.monotonic() + 10
                while realnode.process_alive(pid) and time.monotonic() < killed:
                    time.sleep(0.05)
                if realnode.process_alive(pid):
                    log(f"{name} (pid {pid}) still running 10 s after SIGKILL")
    if keep_logs:
        for sub in ("etcd", "pki", "cluster.json"):
            p = state_dir / sub
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    else:
        shutil.rmtree(state_dir, ignore_errors=True)


def _require(state_dir: Path, name: str) -> ClusterState:
    state = ClusterState.load(state_dir)
    if state is None:
        raise RuntimeError(f"no cluster state in {state_dir}")
    if name not in state.commands:
        known = ", ".join(state.commands) or "none (a state saved before restarts were supported)"
        raise KeyError(f"no saved command for component {name!r} in {state_dir}; restartable: {known}")
    return state


def stop_component(state_dir: Path, name: str, sig: int = signal.SIGKILL, timeout: float = 15.0) -> None:
    """Stop one component of a running cluster (its whole process group) and wait until it is gone.

    SIGKILL by default: a crash, not a graceful shutdown. After ``timeout`` a process that ignored
    ``sig`` gets SIGKILL. ``start_component`` starts it again; until then ``down`` still works.
    """
    state = _require(state_dir, name)
    pid = state.pids.get(name)
    if not realnode.process_alive(pid):
        return
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while realnode.process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if realnode.process_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while realnode.process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if realnode.process_alive(pid):
            raise RuntimeError(f"{name} (pid {pid}) survived SIGKILL for 10 s")


def start_component(state_dir: Path, name: str, wait: bool = True, timeout: float = 120.0) -> ClusterState:
    """Start a stopped component again with its saved command line, appending to its log.

    The new pid goes into the saved state (so ``down`` stops it). With ``wait``: for
    kube-apiserver and etcd, returns once the API server's /readyz answers 200 again; for the
    other components, once the process has survived its first half second. Raises (with the log's
    tail) when the process exits while waited for. The process inherits this process's
    environment, not the original one (the components need none of their own).
    """
    state = _require(state_dir, name)
    if realnode.process_alive(state.pids.get(name)):
        raise RuntimeError(f"{name} (pid {state.pids[name]}) is still running; stop it first")
    log_path = Path(state.log_files.get(name) or Path(state_dir, "logs", f"{name}.log"))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")
    out.write(f"\n--- restarted by localcluster at {time.strftime('%H:%M:%S')} ---\n".encode())
    out.flush()
    proc = subprocess.Popen(state.commands[name], stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    started = time.monotonic()
    out.close()  # the child holds its own descriptor
    state.pids[name] = proc.pid
    state.save()
    if not wait:
        return state
    logs = log_path.parent if log_path.name == f"{name}.log" else Path(state_dir, "logs")
    if name == "etcd":
        cmd = state.commands[name]
        client_url = cmd[cmd.index("--advertise-client-urls") + 1]

        def etcd_healthy() -> bool:
            with urllib.request.urlopen(client_url + "/health", timeout=2) as resp:
                return json.loads(resp.read()).get("health") == "true"

        _wait("etcd /health", etcd_healthy, timeout, {name: proc}, logs)
    if name in ("kube-apiserver", "etcd"):
        api = ApiClient(state.server, state.token)
        _wait("kube-apiserver /readyz", lambda: api.request("GET", "/readyz")[0] == 200,
              timeout, {name: proc}, logs)
    else:
        _wait(f"{name} to stay up", lambda: time.monotonic() - started > 0.5, timeout, {name: proc}, logs)
    log(f"{name} restarted (pid {proc.pid})")
    return state


def restart(state_dir: Path, name: str, down_seconds: float = 0.0, sig: int = signal.SIGKILL,
            timeout: float = 120.0) -> ClusterState:
    """Kill one component of a running cluster (``sig`` to its process group, SIGKILL by default),
    keep it down ``down_seconds``, start it again with the same command line (same log file) and
    return the updated state once it serves again (see ``start_component``).

    Components: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (and with a
    real node containerd, kubelet, kube-proxy). etcd keeps its data directory, so every object
    survives; the API server's ports and certificates stay the same, so kubeconfigs stay valid.
    """
    stop_component(state_dir, name, sig)
    if down_seconds > 0:
        time.sleep(down_seconds)
    return start_component(state_dir, name, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status", "restart"])
    parser.add_argument("component", nargs="?",
                        help="restart: the component (etcd, kube-apiserver, kube-controller-manager, ...)")
    parser.add_argument("--down-seconds", type=float, default=0.0,
                        help="restart: how long the component stays down (default 0)")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE,
                        help=f"state directory (default {DEFAULT_STATE})")
    parser.add_argument("--real-node", action="store_true",
                        help="also run a real kubelet node (containerd, runc, bridge CNI, kube-proxy)")
    args = parser.parse_args(argv)
    if args.action == "up":
        state = up(args.state, real_node=args.real_node)
        print(state.kubeconfig)
    elif args.action == "restart":
        if not args.component:
            parser.error("restart needs a component name")
        restart(args.state, args.component, down_seconds=args.down_seconds)
    elif args.action == "down":
        down(args.state)
        log(f"stopped and removed {args.state}")
    else:
        state = ClusterState.load(args.state)
        ok = bool(state and healthy(state))
        print(json.dumps({"running": ok, **(asdict(state) if state else {})}, indent=2))
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
