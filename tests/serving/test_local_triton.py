"""A real Triton Inference Server (pytriton wheel, CPU, Python backend) serving a repository.

Covers what ``optimodel serve``, the demo and the benchmark rely on: correct answers against
the reference, dynamic batching and the queue-depth gauge Triton exposes (made exact by holding
the model: see conftest), and a clean lifecycle (no process, port, shm or temp dir left).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from optimodel.serving.loadgen import infer
from optimodel.triton.config import parse_config, render_config
from optimodel.triton.local import LocalTriton, TritonError
from optimodel.triton.metrics import PENDING_REQUESTS_METRIC
from optimodel.triton.overrides import apply_serving

pytestmark = pytest.mark.triton


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_serves_the_model_and_matches_the_reference(start_triton, make_repo, tiny_encoder):
    triton = start_triton(make_repo("tiny"), ["tiny"])
    assert triton.model_ready("tiny")
    for protocol, batch in (("http", 5), ("grpc", 3)):
        feeds = tiny_encoder.inputs(batch, seed=batch)
        got = infer(triton, "tiny", feeds, ["embedding"], protocol)["embedding"]
        want = tiny_encoder.reference(**feeds)
        assert got.shape == want.shape == (batch, 8)
        assert cosine(got, want).min() >= 0.9999
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_queue_depth_gauge_and_dynamic_batching(start_triton, make_repo, holders, tmp_path):
    hold = tmp_path / "hold"
    triton = start_triton(make_repo("tiny", max_batch_size=4, hold_file=str(hold)), ["tiny"])
    holder = holders(triton, "tiny", hold)
    holder.hold(queued=9)  # 1 executing (held) + 9 waiting in the dynamic batcher's queue
    time.sleep(0.5)
    assert triton.metric(PENDING_REQUESTS_METRIC, "tiny") == 9  # stable while held
    holder.release()
    assert triton.metric(PENDING_REQUESTS_METRIC, "tiny") == 0
    count = triton.metric("nv_inference_count", "tiny")
    executions = triton.metric("nv_inference_exec_count", "tiny")
    # The 9 queued requests were merged into batches of at most 4: 1 + ceil(9 / 4) executions.
    assert (count, executions) == (10, 4)
    assert executions < count


def test_without_dynamic_batching_every_request_runs_alone(start_triton, make_repo, holders,
                                                           tmp_path):
    hold = tmp_path / "hold"
    repo = make_repo("tiny", max_batch_size=4, hold_file=str(hold))
    config_path = repo / "tiny" / "config.pbtxt"
    from optimodel.api.spec import Serving

    config = apply_serving(parse_config(config_path.read_text()),
                           Serving.model_validate({"dynamicBatching": {"enabled": False}}),
                           layout="python")
    config_path.write_text(render_config(config))
    triton = start_triton(repo, ["tiny"])
    holder = holders(triton, "tiny", hold)
    holder.hold(queued=5)
    holder.release()
    assert (triton.metric("nv_inference_count", "tiny"),
            triton.metric("nv_inference_exec_count", "tiny")) == (6, 6)


def test_stop_leaves_nothing_behind(triton_installed, make_repo):
    triton = LocalTriton(make_repo("tiny"), ["tiny"])
    with triton:
        pid = triton.process.pid
        ports = (triton.endpoints.http_port, triton.endpoints.grpc_port, triton.endpoints.metrics_port)
        log_dir = triton.log_path.parent
        shm_prefix = triton._shm_prefix
        assert list(Path("/dev/shm").glob(f"{shm_prefix}*"))  # the stub's region exists
        children = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
        assert len(children) >= 2  # tritonserver + the model's stub process
    for child in children:
        assert not Path(f"/proc/{child}").exists() or \
            Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
    assert all(port_is_free(p) for p in ports)
    assert not log_dir.exists()
    assert not list(Path("/dev/shm").glob(f"{shm_prefix}*"))


def test_a_model_that_fails_to_load_is_reported_with_the_log(triton_installed, make_repo):
    repo = make_repo("tiny")
    (repo / "tiny" / "1" / "model.py").write_text("import no_such_module_anywhere\n")
    with pytest.raises(TritonError) as err:
        with LocalTriton(repo, ["tiny"], ready_timeout=60):
            pass
    message = str(err.value)
    assert "exited with code" in message and "tiny" in message
    assert "no_such_module_anywhere" in message  # from the server log tail


def test_optimodel_serve_cli(triton_installed, make_repo, tiny_encoder, tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    make_repo("tiny").rename(build / "repository-python")  # a build output's layout
    env = dict(os.environ, PYTHONSAFEPATH="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "optimodel.cli", "serve", str(build),
         "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"],
        cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        output = "".join(lines)
        assert "model    tiny: READY" in output, output
        http = re.search(r"HTTP\s+(http://\S+)", output).group(1)
        metrics = re.search(r"metrics\s+(http://\S+)", output).group(1)
        assert re.search(r"gRPC\s+127\.0\.0\.1:\d+", output)
        import requests

        assert requests.get(f"{http}/v2/health/ready", timeout=5).status_code == 200
        assert PENDING_REQUESTS_METRIC in requests.get(metrics, timeout=5).text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "stopping Triton" in proc.stdout.read()
        assert port_is_free(int(http.rsplit(":", 1)[1]))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_backend_dir_is_readable_by_other_users(tmp_path):
    """The triton-local image prepares the backend as root and runs Triton as UID 1000."""
    import stat

    from optimodel.triton.local import prepare_backend_dir

    backend = prepare_backend_dir(cache=tmp_path)
    for path in (backend, backend / "python", backend / "python" / "triton_python_backend_stub"):
        mode = path.stat().st_mode
        assert mode & stat.S_IROTH and (not path.is_dir() or mode & stat.S_IXOTH), (path, oct(mode))
