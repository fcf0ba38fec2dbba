"""`hack/localcluster.py down` leaves nothing behind: no process, no listening port, no state."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import localcluster
import pytest

pytestmark = pytest.mark.cluster


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child counts as gone once reaped
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def test_up_then_down_leaves_nothing_behind(cluster):
    state_dir = Path(tempfile.mkdtemp(prefix="optimodel-lifecycle-"))
    state = localcluster.up(state_dir)
    assert state.ready_seconds < 60, f"control plane took {state.ready_seconds}s with cached binaries"
    pids = dict(state.pids)
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    port = urlparse(state.server).port
    localcluster.down(state_dir)
    assert [name for name, pid in pids.items() if alive(pid)] == []
    assert not state_dir.exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # the apiserver's port is free again
