"""The test-side view of a control plane (kubeconfig, pinned kubectl, API client) and a
namespace factory, shared by the session fixtures (tests/conftest.py) and by tiers that start a
control plane of their own (tests/faults)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


class Cluster:
    """What a test needs to talk to the control plane."""

    def __init__(self, kubeconfig: str, bin_dir: Path, ready_seconds: float | None,
                 images: dict[str, str] | None = None, state_dir: Path | None = None):
        self.kubeconfig = kubeconfig
        self.bin_dir = bin_dir
        self.ready_seconds = ready_seconds
        self.images = images or {}  # on a cluster with a real node: image name -> ref
        self.state_dir = state_dir

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", self.kubeconfig, *args],
            input=input, capture_output=True, text=True, check=check, timeout=60,
        )

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)


def make_namespace(cluster: Cluster) -> str:
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:8]}"
    api = client.CoreV1Api(cluster.api_client())
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name,
        labels={
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        },
    )))
    # The ServiceAccount admission plugin refuses pods until the default SA exists.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            api.read_namespaced_service_account("default", name)
            break
        except client.ApiException:
            time.sleep(0.1)
    return name
