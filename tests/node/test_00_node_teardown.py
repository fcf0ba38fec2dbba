"""A real node comes up, runs a pod, and ``down`` leaves the host as it found it.

Named to run first in this tier: only one real node can run on a host (one bridge, one set of
iptables chains), and the session's shared node cluster starts with the first test after this.
What "nothing behind" means is checked from the host's own view: no containerd, kubelet,
kube-proxy or shim process; no mount under the state dir and no CNI network namespace; no
veth or bridge; the iptables and ip6tables rules exactly as before; the node's cgroup gone; the
kernel tunables the kubelet changed restored.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import localcluster
import pytest
import realnode
from kubernetes import client, config
from polling import wait_for
from realpods import on_real_node, processes_with

pytestmark = pytest.mark.node

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NODE_PROCESSES = ("containerd", "containerd-shim-runc-v2", "kubelet", "kube-proxy")


def _node_processes() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                exe = Path((proc / "cmdline").read_bytes().split(b"\0")[0].decode()).name
            except (OSError, UnicodeDecodeError, IndexError):
                continue
            if exe in NODE_PROCESSES:
                found.append(f"{exe}[{proc.name}]")
    return found


def _links() -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").iterdir()
                  if p.name == realnode.BRIDGE or p.name.startswith("veth"))


def _tunables() -> dict[str, str | None]:
    return {name: realnode._read_tunable(name) for name in realnode.KERNEL_TUNABLES}


def test_up_run_a_pod_down_leaves_nothing_behind():
    missing = realnode.missing_host_pieces()
    if missing:
        (pytest.fail if IN_CI else pytest.skip)(f"real node: missing {', '.join(missing)}")
    assert not realnode.HOST_RECORD.exists(), "another real node runs on this host"
    before = {"processes": _node_processes(), "links": _links(), "iptables": realnode.iptables_rules(),
              "tunables": _tunables()}
    assert before["processes"] == [] and before["links"] == []
    state_dir = Path(tempfile.mkdtemp(prefix="optimodel-node-lifecycle-"))
    state = localcluster.up(state_dir, timeout=240, real_node=True)
    try:
        assert {"containerd", "kubelet", "kube-proxy"} <= set(state.pids)
        core = client.CoreV1Api(config.new_client_from_config(config_file=state.kubeconfig))
        core.create_namespaced_pod("default", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
            "spec": on_real_node([{"name": "main", "image": state.images["operator"],
                                   "command": ["python3", "-c", "import time; time.sleep(3600)",
                                               "optimodel-teardown-marker"]}],
                                 terminationGracePeriodSeconds=30),
        })
        wait_for(lambda: processes_with("optimodel-teardown-marker"), timeout=120, what="the pod's process")
        during = {"links": _links(), "iptables": realnode.iptables_rules()}
        assert realnode.BRIDGE in during["links"] and any(l.startswith("veth") for l in during["links"])
        assert during["iptables"] != before["iptables"], "kube-proxy wrote no rules?"
    finally:
        localcluster.down(state_dir)
    assert _node_processes() == []
    assert processes_with("optimodel-teardown-marker") == []
    assert _links() == []
    assert realnode.iptables_rules() == before["iptables"]
    assert _tunables() == before["tunables"]
    assert not realnode._mounts_under([str(state_dir), str(realnode.NETNS_DIR)])
    assert not list(realnode.NETNS_DIR.glob("cni-*")) if realnode.NETNS_DIR.is_dir() else True
    assert not any((h / realnode.CGROUP_ROOT).exists() for h in realnode._cgroup_hierarchies())
    assert not state_dir.exists() and not realnode.HOST_RECORD.exists()
