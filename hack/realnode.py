"""A real node for the local control plane: containerd + runc, a kubelet, bridge CNI, kube-proxy.

Why: kwok nodes run nothing, so images, probes, termination messages, Services and the
builder -> Triton -> autoscaler loop were never exercised. This machine runs containers (Debian's
containerd and runc, cgroup v1), so one real CPU node joins the same API server with its own
client certificate. The kwok GPU pools stay: GPU scheduling is still tested on them.

What the node is, for pods that want it (and only those):

- name ``optimodel-node``; labels ``optimodel.dev/pool=real`` and ``optimodel.dev/real-node=true``;
  taint ``optimodel.dev/real-node=true:NoSchedule``: a pod lands here only with that toleration
  (and a ``nodeSelector`` on the label to keep it off the kwok pools);
- pod network ``10.250.0.0/24`` on the bridge ``omcni0``; the bridge's address ``10.250.0.1`` is
  the node IP, the API server's address, and reachable from the host and from pods;
- Services through kube-proxy (iptables mode); no cluster DNS unless ``extra DNS`` is configured
  by a caller (pods get an empty resolv.conf, so nothing leaves the machine by name).

What it changes on the host, and puts back on ``stop``: the bridge, veths and network
namespaces; iptables/ip6tables chains named ``KUBE-*`` / ``CNI-*`` and the jumps to them; the
kubelet's mounts; the cgroup ``/optimodel-node`` in each v1 hierarchy; the kernel tunables the
kubelet sets at start (saved before, restored after). containerd keeps its image store under
the cache (``$OPTIMODEL_CACHE/containerd``) so images are imported once, not per cluster.

Pitfalls met here (``shared/DESIGN.md`` section 8): root lacks CAP_SYS_RESOURCE, so containerd
must set ``restrict_oom_score_adj``; the sandbox (pause) image must be local; image references
are normalised (``localhost/x:tag``); the kubelet needs cgroupfs, ``failSwapOn: false`` and a
non-loopback node IP.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

NODE_NAME = "optimodel-node"
BRIDGE = "omcni0"
POD_CIDR = "10.250.0.0/24"
NODE_IP = "10.250.0.1"
NODE_LABELS = {"optimodel.dev/pool": "real", "optimodel.dev/real-node": "true"}
NODE_TAINT = {"key": "optimodel.dev/real-node", "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": NODE_TAINT["key"], "operator": "Equal", "value": NODE_TAINT["value"],
              "effect": NODE_TAINT["effect"]}
NODE_SELECTOR = {"optimodel.dev/pool": "real"}
CGROUP_ROOT = "optimodel-node"
CNI_NETWORK = "optimodel"
CNI_BIN_DIR = Path("/usr/lib/cni")
NETNS_DIR = Path("/var/run/netns")
CGROUP_V1 = Path("/sys/fs/cgroup")
# The kubelet writes these at start (protectKernelDefaults: false); we put the old values back.
KERNEL_TUNABLES = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
OWNED_CHAIN_PREFIXES = ("KUBE-", "CNI-")
REQUIRED_COMMANDS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip6tables",
                     "ip", "conntrack", "mount", "umount")
REQUIRED_CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
INSTALL_HINT = "run hack/install-node-deps.sh (as root) to install containerd, runc and the CNI plugins"


def log(msg: str) -> None:
    print(f"[realnode {time.strftime('%H:%M:%S')}] {msg}", flush=True, file=sys.stderr)


def containerd_root() -> Path:
    """containerd's content and snapshot store: kept across clusters, keyed to this cache."""
    cache = Path(os.environ.get("OPTIMODEL_CACHE", Path.home() / ".cache" / "optimodel"))
    return cache / "containerd" / "root"


# Which state dir holds the node that runs on this host now, so that a node that died (SIGKILL,
# reboot of the test session) is cleaned up, its kernel tunables restored, before the next one.
HOST_RECORD = Path("/run/optimodel/realnode.json")


def socket_path(state_dir: Path) -> Path:
    return state_dir / "node" / "containerd.sock"


# --------------------------------------------------------------------------------------------
# Preconditions
# --------------------------------------------------------------------------------------------


def missing_host_pieces() -> list[str]:
    """What this machine lacks to run a real node (empty when everything is there)."""
    missing = [c for c in REQUIRED_COMMANDS if shutil.which(c) is None]
    missing += [f"CNI plugin {p}" for p in REQUIRED_CNI_PLUGINS if not (CNI_BIN_DIR / p).is_file()]
    if os.geteuid() != 0:
        missing.append("root (containerd and the kubelet run as root)")
    if not (CGROUP_V1 / "memory").is_dir() and not (CGROUP_V1 / "cgroup.controllers").is_file():
        missing.append("cgroup hierarchies under /sys/fs/cgroup")
    return missing


def check_host() -> None:
    missing = missing_host_pieces()
    if missing:
        raise RuntimeError(f"real node: missing {', '.join(missing)}; {INSTALL_HINT}")


# --------------------------------------------------------------------------------------------
# Host network and kernel state (made before the API server starts: it binds the node IP)
# --------------------------------------------------------------------------------------------


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _read_tunable(name: str) -> str | None:
    try:
        return (Path("/proc/sys") / name).read_text().strip()
    except OSError:
        return None


def prepare_host(state_dir: Path) -> None:
    """Clean up after any earlier node that died, save kernel tunables, create the bridge."""
    check_host()
    if HOST_RECORD.is_file() or Path(f"/sys/class/net/{BRIDGE}").exists():
        earlier = json.loads(HOST_RECORD.read_text()) if HOST_RECORD.is_file() else {}
        log(f"an earlier node left state behind ({earlier.get('state_dir', 'unknown')}): cleaning up")
        cleanup_host(Path(earlier["state_dir"]) if earlier.get("state_dir") else None)
    node_dir = state_dir / "node"
    node_dir.mkdir(parents=True, exist_ok=True)
    HOST_RECORD.parent.mkdir(parents=True, exist_ok=True)
    HOST_RECORD.write_text(json.dumps({"state_dir": str(state_dir)}))
    saved = {name: _read_tunable(name) for name in KERNEL_TUNABLES}
    (node_dir / "saved-tunables.json").write_text(json.dumps(saved))
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    for hierarchy in _cgroup_hierarchies():
        path = hierarchy / CGROUP_ROOT
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":  # a v1 cpuset child is unusable until it has cpus and mems
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (path / knob).write_text((hierarchy / knob).read_text())


def _cgroup_hierarchies() -> list[Path]:
    if (CGROUP_V1 / "cgroup.controllers").is_file():  # cgroup v2: one hierarchy
        return [CGROUP_V1]
    return [p for p in CGROUP_V1.iterdir() if p.is_dir() and not p.is_symlink() and p.name != "unified"]


# --------------------------------------------------------------------------------------------
# Configuration files
# --------------------------------------------------------------------------------------------


def containerd_config(state_dir: Path, sandbox_image: str) -> str:
    node = state_dir / "node"
    return f"""version = 2
root = "{containerd_root()}"
state = "{node / 'containerd-state'}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{socket_path(state_dir)}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj would make runc fail the sandbox.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{node / 'cni'}"
"""


def cni_config(state_dir: Path) -> dict:
    """bridge (the node's pod network, no masquerade: pods reach only this machine) + portmap."""
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(state_dir / "node" / "cni-ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def cert_kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }


def kubelet_config(state_dir: Path, ca: Path, port: int) -> dict:
    node = state_dir / "node"
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "failSwapOn": False,
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{socket_path(state_dir)}",
        "podLogsDir": str(node / "pod-logs"),
        "registerWithTaints": [NODE_TAINT],
        # No cluster DNS here: pods get an empty resolv.conf rather than the host's resolver.
        "resolvConf": "",
        # Images cannot be pulled again (no registry): never garbage-collect them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "makeIPTablesUtilChains": False,
        "serializeImagePulls": False,
        "maxPods": 60,
        "shutdownGracePeriod": "0s",
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        # Leave the host's sysctls alone: no route_localnet, no conntrack table resizing.
        "iptables": {"localhostNodePorts": False, "syncPeriod": "10s", "minSyncPeriod": "0s"},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                      "tcpCloseWaitTimeout": "0s", "udpTimeout": "0s", "udpStreamTimeout": "0s"},
    }


# --------------------------------------------------------------------------------------------
# Start and stop
# --------------------------------------------------------------------------------------------


def ctr(state_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run("ctr", "--address", str(socket_path(state_dir)), "--namespace", "k8s.io", *args,
                check=check)


def import_images(state_dir: Path, refs: list[str], export: Callable[[str], Path]) -> None:
    """Import each image the node lacks into its containerd.

    ``export(ref)`` puts the image into an OCI layout directory (uncompressed layers) and returns
    it. containerd keeps its store across clusters, so the archive streamed to ``ctr images
    import`` carries only the blobs containerd does not hold yet: an unchanged dependency layer
    (gigabytes, for a builder) is neither copied nor unpacked again.
    """
    present_images = set(ctr(state_dir, "images", "list", "--quiet").stdout.split())
    for ref in refs:
        if ref in present_images:
            continue
        t0 = time.monotonic()
        layout = export(ref)
        have = set(ctr(state_dir, "content", "list", "--quiet").stdout.split())
        importer = subprocess.Popen(
            ["ctr", "--address", str(socket_path(state_dir)), "--namespace", "k8s.io", "images", "import",
             "--snapshotter", "overlayfs", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            sent, skipped = write_import_archive(layout, ref, have, importer.stdin)
        finally:
            importer.stdin.close()
        err = importer.stderr.read()
        importer.wait()
        if importer.returncode != 0:
            raise RuntimeError(f"importing {ref} failed: {err.decode(errors='replace').strip()[-800:]}")
        if ref not in set(ctr(state_dir, "images", "list", "--quiet").stdout.split()):
            raise RuntimeError(f"importing {ref} did not create that image in containerd")
        log(f"imported {ref} in {time.monotonic() - t0:.1f}s ({sent / 2**20:.0f} MiB new, "
            f"{skipped / 2**20:.0f} MiB already in the node's store)")
        # Older builds of the same image: containerd's garbage collector then frees their
        # layers and snapshots (those still used by a container stay until it is gone).
        repository = ref.rsplit(":", 1)[0]
        stale = [r for r in ctr(state_dir, "images", "list", "--quiet").stdout.split()
                 if r.rsplit(":", 1)[0] == repository and r != ref]
        if stale:
            ctr(state_dir, "images", "remove", *stale, check=False)


def write_import_archive(layout: Path, ref: str, have: set[str], sink) -> tuple[int, int]:
    """An OCI archive of ``ref`` from ``layout`` to ``sink``, without the blobs in ``have``.

    The manifest and config always go (they are small, and they name the image); a layer goes
    only if its digest is not in ``have``. Returns (layer bytes sent, layer bytes left out).
    """
    index = json.loads((layout / "index.json").read_text())
    matches = [m for m in index["manifests"]
               if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == ref]
    if not matches:
        raise RuntimeError(f"{ref} is not in the OCI layout {layout}")
    manifest_desc = matches[-1]

    def blob(digest: str) -> Path:
        return layout / "blobs" / digest.replace(":", "/", 1)

    manifest = json.loads(blob(manifest_desc["digest"]).read_text())
    sent = skipped = 0
    with tarfile.open(fileobj=sink, mode="w|") as out:
        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))

        add_bytes("oci-layout", (layout / "oci-layout").read_bytes())
        add_bytes("index.json", json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}).encode())
        for desc in (manifest_desc, manifest["config"]):
            out.add(str(blob(desc["digest"])), arcname=f"blobs/{desc['digest'].replace(':', '/', 1)}")
        for layer in manifest["layers"]:
            if layer["digest"] in have:
                skipped += layer["size"]
                continue
            out.add(str(blob(layer["digest"])), arcname=f"blobs/{layer['digest'].replace(':', '/', 1)}")
            sent += layer["size"]
    return sent, skipped


def start(state_dir: Path, bin_dir: Path, pki: dict, server: str,
          spawn: Callable[[str, list[str]], None], free_port: Callable[[], int],
          sandbox_image: str, images: list[str], export: Callable[[str], Path],
          alive: Callable[[], None]) -> None:
    """Start containerd, the kubelet and kube-proxy. ``spawn`` records their pids in the cluster."""
    node = state_dir / "node"
    for sub in ("cni", "kubelet", "kubelet-pki", "pod-logs", "cni-ipam"):
        (node / sub).mkdir(parents=True, exist_ok=True)
    containerd_root().mkdir(parents=True, exist_ok=True)
    (node / "containerd.toml").write_text(containerd_config(state_dir, sandbox_image))
    (node / "cni" / "10-optimodel.conflist").write_text(json.dumps(cni_config(state_dir), indent=2))
    spawn("containerd", ["containerd", "--config", str(node / "containerd.toml"), "--log-level", "warn"])
    deadline = time.monotonic() + 60
    while ctr(state_dir, "version", check=False).returncode != 0:
        alive()
        if time.monotonic() > deadline:
            raise RuntimeError("containerd did not answer on its socket within 60 s")
        time.sleep(0.2)
    # An import that was killed (a timed-out session) leaves its lease behind, and a lease keeps
    # gigabytes of content from containerd's garbage collector for a day. None is in use now.
    for lease in ctr(state_dir, "leases", "list", "--quiet", check=False).stdout.split():
        ctr(state_dir, "leases", "delete", lease, check=False)
    import_images(state_dir, [sandbox_image, *[i for i in images if i != sandbox_image]], export)

    ca = pki["ca"].cert
    kubelet_kc, proxy_kc = node / "kubelet.kubeconfig", node / "kube-proxy.kubeconfig"
    kubelet_kc.write_text(json.dumps(cert_kubeconfig(server, ca, pki["kubelet"].cert, pki["kubelet"].key,
                                                     f"system:node:{NODE_NAME}")))
    proxy_kc.write_text(json.dumps(cert_kubeconfig(server, ca, pki["kube-proxy"].cert, pki["kube-proxy"].key,
                                                   "system:kube-proxy")))
    (node / "kubelet.json").write_text(json.dumps(kubelet_config(state_dir, ca, free_port()), indent=2))
    (node / "kube-proxy.json").write_text(json.dumps(kube_proxy_config(proxy_kc, free_port(), free_port())))
    spawn("kubelet", [
        str(bin_dir / "kubelet"), "--config", str(node / "kubelet.json"), "--kubeconfig", str(kubelet_kc),
        "--root-dir", str(node / "kubelet"), "--cert-dir", str(node / "kubelet-pki"),
        "--hostname-override", NODE_NAME, "--node-ip", NODE_IP,
        "--node-labels", ",".join(f"{k}={v}" for k, v in NODE_LABELS.items()), "--v", "1",
    ])
    spawn("kube-proxy", [str(bin_dir / "kube-proxy"), "--config", str(node / "kube-proxy.json"), "--v", "1"])


def stop(state_dir: Path, request: Callable | None, pids: dict[str, int]) -> None:
    """Drain the node (pods deleted so the kubelet tears down their sandboxes), then stop it all.

    ``request(method, path, body)`` talks to the API server while it still runs; ``None`` when it
    is already gone, in which case containers are killed through containerd directly.
    """
    if request is not None and pids.get("kubelet"):
        try:
            _drain(state_dir, request)
        except Exception as err:  # noqa: BLE001 - teardown goes on regardless
            log(f"drain failed ({err}); killing containers directly")
    for name in ("kube-proxy", "kubelet"):
        _terminate(pids.get(name))
    if pids.get("containerd") and process_alive(pids["containerd"]):
        _remove_all_containers(state_dir)
    _terminate(pids.get("containerd"))
    cleanup_host(state_dir)


def _drain(state_dir: Path, request: Callable) -> None:
    request("PATCH", f"/api/v1/nodes/{NODE_NAME}", {"spec": {"unschedulable": True}},
            "application/merge-patch+json")
    status, body = request("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE_NAME}", None)
    for pod in (body.get("items", []) if isinstance(body, dict) else []):
        meta = pod["metadata"]
        request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0})
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        running = [line for line in ctr(state_dir, "tasks", "list", check=False).stdout.splitlines()[1:]
                   if "RUNNING" in line]
        if not running:
            return
        time.sleep(0.5)
    log("containers still running 45 s after their pods were deleted")


def _remove_all_containers(state_dir: Path) -> None:
    tasks = ctr(state_dir, "tasks", "list", "--quiet", check=False).stdout.split()
    for task in tasks:
        ctr(state_dir, "tasks", "kill", "--signal", "SIGKILL", task, check=False)
    deadline = time.monotonic() + 15
    for task in tasks:
        while time.monotonic() < deadline and ctr(state_dir, "tasks", "delete", task, check=False).returncode:
            time.sleep(0.2)
    for container in ctr(state_dir, "containers", "list", "--quiet", check=False).stdout.split():
        ctr(state_dir, "containers", "delete", container, check=False)


def process_alive(pid: int | None) -> bool:
    """Running, in any of its threads.

    A zombie counts as ended, but only once every thread has exited: after SIGKILL or exit_group
    a multi-threaded process (every Go binary here) shows its leader as "Z" while its other threads
    are still tearing down, and until then it can neither be reaped nor free its ports. Reading only
    the leader's state once let ``down`` return with a kube-apiserver still alive (seen in CI).
    """
    if not pid:
        return False
    try:
        # Our child: waitpid is the authority. (0, 0) means some thread is still running.
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        pass  # not our child (or already reaped): ask /proc about each thread
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # that thread just went away
        if state not in ("Z", "X"):
            return True
    return False


def _terminate(pid: int | None, timeout: float = 15) -> None:
    if not process_alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if process_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------------------------
# Host cleanup: idempotent, also run before a node starts after one that died
# --------------------------------------------------------------------------------------------


def _shim_pids(state_dir: Path | None) -> list[int]:
    """containerd-shim-runc-v2 processes of our containerd (all of them if state_dir is None)."""
    pids = []
    address = str(socket_path(state_dir)) if state_dir else None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2"):
            if address is None or address.encode() in argv:
                pids.append(int(proc.name))
    return pids


def _mounts_under(prefixes: list[str]) -> list[str]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes):
            mounts.append(point)
    return sorted(set(mounts), key=len, reverse=True)


def owned_rules(table_dump: str) -> tuple[list[str], list[str]]:
    """From ``iptables -t T -S``: (rules to delete, chains to remove) that belong to us.

    Ours: any chain named KUBE-* or CNI-*, and every rule in a built-in chain that jumps to one
    or that carries a kube/CNI comment. Pure, so it is tested without touching the firewall.
    """
    rules, chains = [], []
    for line in table_dump.splitlines():
        parts = shlex.split(line)
        if len(parts) >= 2 and parts[0] == "-N" and parts[1].startswith(OWNED_CHAIN_PREFIXES):
            chains.append(parts[1])
        elif len(parts) >= 2 and parts[0] == "-A" and not parts[1].startswith(OWNED_CHAIN_PREFIXES):
            target = parts[parts.index("-j") + 1] if "-j" in parts else ""
            if target.startswith(OWNED_CHAIN_PREFIXES) or "kubernetes" in line or "CNI-" in line:
                rules.append(line)
    return rules, chains


def iptables_rules() -> dict[str, str]:
    """``{tool/table: rules}`` of every table, for cleanup and for the teardown test."""
    dump = {}
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle", "raw"):
            proc = _run(tool, "-w", "-t", table, "-S", check=False)
            if proc.returncode == 0:
                dump[f"{tool}/{table}"] = proc.stdout
    return dump


def _cleanup_iptables() -> None:
    for key, text in iptables_rules().items():
        tool, table = key.split("/")
        rules, chains = owned_rules(text)
        for rule in rules:
            _run(tool, "-w", "-t", table, "-D", *shlex.split(rule)[1:], check=False)
        for chain in chains:
            _run(tool, "-w", "-t", table, "-F", chain, check=False)
        for chain in chains:
            _run(tool, "-w", "-t", table, "-X", chain, check=False)


def _remove_cgroups() -> None:
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / CGROUP_ROOT
        if not root.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda t: len(t[0]), reverse=True):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


def cleanup_host(state_dir: Path | None) -> None:
    """Remove everything a node leaves on the host. Safe to run twice, or with no node at all."""
    for pid in _shim_pids(state_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    prefixes = [str(NETNS_DIR)]
    if state_dir is not None:
        prefixes.append(str(state_dir / "node"))
    for point in _mounts_under(prefixes):
        if point.startswith(str(NETNS_DIR)) and not Path(point).name.startswith("cni-"):
            continue
        if _run("umount", point, check=False).returncode != 0:
            _run("umount", "-l", point, check=False)
    if NETNS_DIR.is_dir():
        for netns in NETNS_DIR.glob("cni-*"):
            netns.unlink(missing_ok=True)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        for port in Path(f"/sys/class/net/{BRIDGE}/brif").iterdir():
            _run("ip", "link", "delete", port.name, check=False)
        _run("ip", "link", "delete", BRIDGE, check=False)
    _cleanup_iptables()
    _remove_cgroups()
    if state_dir is not None:
        saved_path = state_dir / "node" / "saved-tunables.json"
        if saved_path.is_file():
            for name, value in json.loads(saved_path.read_text()).items():
                if value is not None and _read_tunable(name) != value:
                    try:
                        (Path("/proc/sys") / name).write_text(value)
                    except OSError as err:
                        log(f"could not restore {name}={value}: {err}")
    HOST_RECORD.unlink(missing_ok=True)
