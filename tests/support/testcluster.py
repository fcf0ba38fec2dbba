"""The test-side view of a control plane (kubeconfig, pinned kubectl, API client) and a
namespace factory, shared by the session fixtures (tests/conftest.py) and by tiers that start a
control plane of their own (tests/faults)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
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
        """Run the pinned kubectl; with ``check``, a failure raises with kubectl's stderr."""
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", self.kubeconfig, *args],
            input=input, capture_output=True, text=True, timeout=60,
        )
        if check and proc.returncode:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

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


def unavailable(what: str, err: object = None) -> None:
    """A missing prerequisite: a failure in CI (a green run must mean the tier ran), else a skip."""
    import pytest

    detail = f": {err}" if err else ""
    if IN_CI:
        pytest.fail(f"{what} unavailable in CI{detail}")
    pytest.skip(f"{what} unavailable{detail}", allow_module_level=True)  # also from a module's top


def need_module(module: str, what: str = ""):
    """``import module``, or ``unavailable``: a dependency ``make test`` installs (torch, onnx,
    the MiniLM weights package) fails the run in CI instead of skipping it silently, unlike
    ``pytest.importorskip``. GPU-only packages (tensorrt) are not for this: they may skip."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        unavailable(what or f"the {module} package", err)


def start_control_plane(prefix: str):
    """Start a control plane of one's own (``hack/localcluster.py``) in a fresh state folder;
    (bin_dir, state_dir, state). Missing binaries or a failed start go through ``unavailable``.
    The caller stops it with ``localcluster.down(state_dir)``."""
    import localcluster  # hack/ is on the tests' pythonpath

    try:
        bin_dir = localcluster.ensure_binaries()
    except Exception as err:  # noqa: BLE001 - reported as a failure in CI, else a skip
        unavailable("control-plane binaries (run hack/install-binaries.sh)", err)
    state_dir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        state = localcluster.up(state_dir)
    except Exception as err:  # noqa: BLE001
        shutil.rmtree(state_dir, ignore_errors=True)
        unavailable("control plane (it failed to start)", err)
    return bin_dir, state_dir, state
