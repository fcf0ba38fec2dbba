"""A real S3-compatible object store (MinIO, built by hack/install-minio.sh) for s3:// tests."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from localcluster import free_port  # hack/ is on the tests' pythonpath

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ObjectStore:
    endpoint: str
    access_key: str
    secret_key: str

    @property
    def env(self) -> dict[str, str]:
        """What a pod gets from its credentials Secret: the standard AWS variables."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def fs(self):
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key,
                                 client_kwargs={"endpoint_url": self.endpoint})


def start_minio() -> tuple[ObjectStore, subprocess.Popen, Path]:
    binary = subprocess.run([str(REPO / "hack" / "install-minio.sh")], check=True,
                            capture_output=True, text=True).stdout.strip()
    data = Path(tempfile.mkdtemp(prefix="optimodel-minio-"))
    port, console = free_port(), free_port()
    store = ObjectStore(f"http://127.0.0.1:{port}", "optimodel", secrets.token_hex(12))
    env = {**os.environ, "MINIO_ROOT_USER": store.access_key, "MINIO_ROOT_PASSWORD": store.secret_key,
           "MINIO_BROWSER": "off", "MINIO_UPDATE": "off"}
    proc = subprocess.Popen([binary, "server", str(data / "d"), "--address", f"127.0.0.1:{port}",
                             "--console-address", f"127.0.0.1:{console}", "--quiet"],
                            env=env, stdout=open(data / "minio.log", "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"minio exited: {(data / 'minio.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{store.endpoint}/minio/health/ready", timeout=1) as r:
                if r.status == 200:
                    return store, proc, data
        except OSError:
            time.sleep(0.1)
    stop_minio(proc, data)
    raise RuntimeError("minio did not become ready in 30 s")


def stop_minio(proc: subprocess.Popen, data: Path) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    shutil.rmtree(data, ignore_errors=True)
