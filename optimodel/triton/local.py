"""A real Triton Inference Server on this machine: the binary from the ``nvidia-pytriton`` wheel.

Why a wrapper: ``optimodel serve``, ``optimodel demo``, the data-plane tests and the dynamic
batching benchmark all need the same thing -- start the actual ``tritonserver`` (CPU, Python
backend) on a model repository, know its endpoints, wait until the model is ready, and stop it
without leaving processes, shared-memory regions or ports behind. Nothing here imports pytriton's
Python API; only its bundled server binary is used.

Facts about the wheel this relies on (nvidia-pytriton 0.7.0, Triton 2.51.0), checked by
``triton_layout()``:

- ``pytriton/tritonserver/bin/tritonserver`` and ``backends/python/libtriton_python.so`` find
  their shared libraries through an RPATH into ``<site-packages>/nvidia_pytriton.libs``.
- The Python backend starts ``<backend dir>/python/triton_python_backend_stub`` per model
  instance; the wheel ships stubs per CPython version under ``python_backend_stubs/3.X/`` and
  none in ``backends/python/``. We never write into the wheel: a private backend directory (a
  copy of ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the stub matching this
  interpreter) is assembled once under the cache directory, atomically.
- The stub embeds ``libpython3.X.so.1.0`` and runs it *isolated* (``sys.flags.isolated``):
  ``PYTHONPATH``/``PYTHONHOME`` are ignored. Its ``sys.executable`` is however the ``python3``
  found on ``PATH``, and the ``site`` module honours a ``pyvenv.cfg`` next to it. So the server
  gets this environment's ``bin/`` first on ``PATH``: the stub then *is* this virtual
  environment's Python (its site-packages, .pth files, numpy and onnxruntime), and
  ``LD_LIBRARY_PATH`` prefers this interpreter's own ``libpython`` when it is a shared build
  (pyenv, python.org) so the embedded interpreter matches the venv's base Python.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from optimodel.triton.layout import CONFIG_FILE
from optimodel.triton.metrics import MODEL_LABEL, metric_value

DEFAULT_READY_TIMEOUT_S = 120.0
# "poll" is left out on purpose: nothing here wants Triton to watch the repository.
MODEL_CONTROL_MODES = ("explicit", "none")
_LOG_TAIL_LINES = 60


class TritonError(RuntimeError):
    """Triton could not be found, started, or did not become ready."""


# --------------------------------------------------------------------------------------------
# Locating the wheel's server and preparing the Python backend
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TritonLayout:
    """Where the pytriton wheel keeps the server, its libraries and the backend stubs."""

    root: Path  # <site-packages>/pytriton/tritonserver
    binary: Path
    backends: Path
    stubs: Path
    libs: Path  # <site-packages>/nvidia_pytriton.libs (auditwheel-vendored shared libraries)


def triton_layout() -> TritonLayout:
    """Find the ``tritonserver`` binary of the installed ``nvidia-pytriton`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError(
            "nvidia-pytriton is not installed in this Python environment "
            f"({sys.executable}); install the 'serve' extra: pip install 'optimodel[serve]'")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    root = pkg / "tritonserver"
    layout = TritonLayout(root=root, binary=root / "bin" / "tritonserver", backends=root / "backends",
                          stubs=root / "python_backend_stubs", libs=pkg.parent / "nvidia_pytriton.libs")
    for path in (layout.binary, layout.backends / "python" / "libtriton_python.so"):
        if not path.is_file():
            raise TritonError(f"the pytriton wheel at {pkg} lacks {path.relative_to(pkg)}")
    return layout


def _cache_root() -> Path:
    return Path(os.environ.get("OPTIMODEL_CACHE", Path.home() / ".cache" / "optimodel"))


def prepare_backend_dir(layout: TritonLayout | None = None, cache: Path | None = None) -> Path:
    """A backend directory whose ``python/`` holds the wheel's backend plus the matching stub.

    Idempotent and safe against concurrent callers: the directory is built under a temporary
    name and renamed into place; its name hashes the wheel location and the Python version, so
    a different venv or interpreter never reuses a stale copy. Falls back to a per-user temp dir
    when the cache is not writable.
    """
    layout = layout or triton_layout()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = layout.stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        available = sorted(p.name for p in layout.stubs.iterdir()) if layout.stubs.is_dir() else []
        raise TritonError(f"the pytriton wheel has no Python backend stub for Python {version} "
                          f"(available: {', '.join(available) or 'none'})")
    src = layout.backends / "python"
    ident = hashlib.sha256(
        f"{layout.root.resolve()}|{version}|{stub.stat().st_size}|{stub.stat().st_mtime_ns}".encode()
    ).hexdigest()[:12]
    for base in (cache or _cache_root(), Path(tempfile.gettempdir()) / f"optimodel-{os.getuid()}"):
        target = base / "triton-backends" / ident
        if (target / "python" / "triton_python_backend_stub").is_file():
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{ident}-", dir=target.parent))
            # mkdtemp makes it 0700: a server running as another user (an image prepared as
            # root, served as a non-root UID) must still read the backend.
            staging.chmod(0o755)
        except OSError:
            continue
        try:
            (staging / "python").mkdir()
            for item in src.iterdir():
                if item.is_file():
                    shutil.copy2(item, staging / "python" / item.name)
            shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
            os.chmod(staging / "python" / "triton_python_backend_stub", 0o755)
            try:
                staging.rename(target)
            except OSError:  # another process won the race; theirs is as good as ours
                shutil.rmtree(staging, ignore_errors=True)
            return target
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            continue
    raise TritonError("cannot create a Triton backend directory (cache and temp dir not writable)")


def server_environment(layout: TritonLayout, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``tritonserver`` so that the Python backend stub runs *this* Python.

    - ``PATH``: this interpreter's ``bin/`` first. The stub's isolated interpreter resolves
      ``sys.executable`` as ``python3`` on ``PATH``; with a venv's ``bin/`` there, ``site`` reads
      its ``pyvenv.cfg`` and adds the venv's site-packages (where numpy and onnxruntime live).
    - ``LD_LIBRARY_PATH``: this interpreter's ``libpython3.X.so.1.0`` first when it is a shared
      build (otherwise the system's libpython is loaded), then the wheel's vendored libraries
      (the copied backend and stub lose their RPATH-relative location).
    """
    env = dict(os.environ if base is None else base)
    bindir = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bindir]
    env["PATH"] = os.pathsep.join([bindir, *path])
    libdirs: list[str] = []
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    libpython = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    if libdir and (Path(libdir) / libpython).is_file():
        libdirs.append(libdir)
    libdirs.append(str(layout.libs))
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
    return env


def exec_server(args: Sequence[str]) -> None:
    """Replace this process with the wheel's ``tritonserver``, its Python backend prepared.

    This is what the local Triton image runs as ``tritonserver``: a drop-in for NVIDIA's binary
    (same arguments), so the operator's Deployment is the same for both images. Signals go
    straight to Triton (``exec``), which drains in-flight requests on SIGTERM.
    """
    layout = triton_layout()
    backend_dir = prepare_backend_dir(layout)
    argv = [str(layout.binary), f"--backend-directory={backend_dir}", *args]
    os.execve(str(layout.binary), argv, server_environment(layout))


# --------------------------------------------------------------------------------------------
# Ports and HTTP helpers
# --------------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (local URL)
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (local URL)
        return resp.read().decode()


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TritonEndpoints:
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def http(self) -> str:
        """``host:port`` as tritonclient.http wants it."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        """``host:port`` as tritonclient.grpc wants it."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


class LocalTriton:
    """Run ``tritonserver`` on a model repository; use as a context manager.

    ``models``: names to load (``--model-control-mode=explicit`` + ``--load-model``); empty means
    every model directory in the repository. Ports left as ``None`` are picked free; if the
    kernel hands one to someone else before Triton binds it, the start is retried on new ports.

    ``model_control_mode``: ``"explicit"`` (the default: only ``models`` are loaded, and the
    model-repository API can load/unload at run time) or ``"none"`` (what the operator's Triton
    pods run: every model in the repository is loaded at startup and load/unload requests are
    refused). In both modes the start waits until every name in ``models`` is ready. The mode
    is set here, never through ``extra_args`` (``--load-model`` is only valid in explicit mode).

    >>> with LocalTriton("out/repository-python", ["minilm"]) as triton:
    ...     print(triton.endpoints.http_url)
    """

    def __init__(
        self,
        repository: str | os.PathLike[str],
        models: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT_S,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        model_control_mode: str = "explicit",
    ) -> None:
        if model_control_mode not in MODEL_CONTROL_MODES:
            raise TritonError(f"model_control_mode must be one of {', '.join(MODEL_CONTROL_MODES)}, "
                              f"not {model_control_mode!r}")
        clashing = [a for a in extra_args if a.split("=", 1)[0] in ("--model-control-mode", "--load-model")]
        if clashing:
            raise TritonError(f"pass the model control mode as model_control_mode=, not in extra_args "
                              f"({' '.join(clashing)})")
        self.model_control_mode = model_control_mode
        self.repository = Path(repository).resolve()
        if not self.repository.is_dir():
            raise TritonError(f"model repository {self.repository} does not exist")
        self.models = list(models) or sorted(
            p.name for p in self.repository.iterdir() if (p / CONFIG_FILE).is_file())
        if not self.models:
            raise TritonError(f"no model (a folder with {CONFIG_FILE}) in {self.repository}")
        self.host = host
        self._ports = (http_port, grpc_port, metrics_port)
        self.ready_timeout = ready_timeout
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        self._own_log_dir: Path | None = None
        self._log_path = Path(log_path) if log_path else None
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoints: TritonEndpoints | None = None
        self._shm_prefix = ""

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            self._own_log_dir = Path(tempfile.mkdtemp(prefix="optimodel-triton-"))
            self._log_path = self._own_log_dir / "tritonserver.log"
        return self._log_path

    def command(self, endpoints: TritonEndpoints, backend_dir: Path, binary: Path) -> list[str]:
        bind = endpoints.host
        args = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--model-control-mode={self.model_control_mode}",
            *([f"--load-model={m}" for m in self.models] if self.model_control_mode == "explicit"
              else []),
            f"--backend-directory={backend_dir}",
            f"--http-address={bind}", f"--http-port={endpoints.http_port}",
            f"--grpc-address={bind}", f"--grpc-port={endpoints.grpc_port}",
            f"--metrics-address={bind}", f"--metrics-port={endpoints.metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=5",
            # Unique shared-memory names, so a killed server's regions can be found and removed.
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]
        return args

    def start(self) -> "LocalTriton":
        if self.process is not None:
            raise TritonError("already started")
        layout = triton_layout()
        backend_dir = prepare_backend_dir(layout)
        env = server_environment(layout)
        attempts = 1 if all(p is not None for p in self._ports) else 3
        last_error: TritonError | None = None
        for _ in range(attempts):
            http_port, grpc_port, metrics_port = (p if p is not None else free_port(self.host)
                                                  for p in self._ports)
            self.endpoints = TritonEndpoints(self.host, http_port, grpc_port, metrics_port)
            self._shm_prefix = f"optimodel_{os.getpid()}_{http_port}_"
            cmd = self.command(self.endpoints, backend_dir, layout.binary)
            log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child)
            try:
                # A new session: Triton and its stub processes form one process group to stop.
                self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
            finally:
                log.close()
            try:
                self._wait_ready()
                return self
            except TritonError as exc:
                last_error = exc
                port_clash = "address already in use" in self.log_tail().lower()
                self.stop()
                if not port_clash:
                    break
        assert last_error is not None
        raise last_error

    def _wait_ready(self) -> None:
        assert self.process is not None and self.endpoints is not None
        deadline = time.monotonic() + self.ready_timeout
        ready = f"{self.endpoints.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise TritonError(f"tritonserver exited with code {code} before it was ready "
                                  f"(models {', '.join(self.models)}).\n{self._log_excerpt()}")
            if _http_status(ready) == 200 and all(self.model_ready(m) for m in self.models):
                return
            time.sleep(0.2)
        raise TritonError(f"tritonserver was not ready within {self.ready_timeout:.0f}s "
                          f"({ready}).\n{self._log_excerpt()}")

    def model_ready(self, model: str) -> bool:
        assert self.endpoints is not None
        return _http_status(f"{self.endpoints.http_url}/v2/models/{model}/ready") == 200

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the process group, then SIGKILL after ``timeout``; remove leftovers."""
        proc, self.process = self.process, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                self._signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
            # The stubs share the group; make sure none outlives the server.
            self._signal_group(proc.pid, signal.SIGKILL)
            code = proc.wait()
        if self._shm_prefix:
            for leftover in Path("/dev/shm").glob(f"{self._shm_prefix}*"):
                leftover.unlink(missing_ok=True)
        return code

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        """Stop the server and delete the log directory this object created."""
        self.stop()
        if self._own_log_dir is not None:
            shutil.rmtree(self._own_log_dir, ignore_errors=True)
            self._own_log_dir = None
            self._log_path = None

    def __enter__(self) -> "LocalTriton":
        try:
            return self.start()
        except BaseException:
            self.close()  # the error already carries the log tail
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observation -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _log_excerpt(self) -> str:
        return f"--- last lines of {self._log_path} ---\n{self.log_tail()}"

    def metrics_text(self) -> str:
        assert self.endpoints is not None
        return http_get(self.endpoints.metrics_url)

    def metric(self, name: str, model: str | None = None) -> float:
        """Current value of one of Triton's per-model metrics (summed over versions)."""
        labels = {MODEL_LABEL: model} if model else {}
        return metric_value(self.metrics_text(), name, **labels)
