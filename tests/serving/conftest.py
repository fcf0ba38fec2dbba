"""Fixtures for the data-plane tests: a tiny ONNX model, Python-backend repositories, a real
local Triton Inference Server and a real Prometheus -- all stopped and removed after each test.

The fixture model is built with ``onnx.helper`` (no torch import: seconds matter on 2 cores) and
served by a Python-backend ``model.py`` that runs it with ONNX Runtime, as the builder's
``repository-python/`` does. It can *hold* every execution while a file exists: a test then
knows exactly how many requests wait in Triton's queue (1 executing + K queued => the pending
gauge reads K), which makes queue-depth and batching assertions exact instead of timing-based.

In CI (``CI=true``) a missing Triton or Prometheus fails the test; locally it skips.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from testcluster import need_module, unavailable

VOCAB, HIDDEN, OUT = 64, 16, 8


def need(condition: bool, why: str) -> None:
    """Skip locally, fail in CI: CI must never silently skip the data-plane tier."""
    if not condition:
        unavailable(why)


# --------------------------------------------------------------------------------------------
# The fixture model
# --------------------------------------------------------------------------------------------


class TinyEncoder:
    """Embedding lookup, masked mean pool, dense + tanh: an encoder's shape, in numpy and ONNX."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.embedding = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
        self.weight = (rng.standard_normal((HIDDEN, OUT)) / np.sqrt(HIDDEN)).astype(np.float32)
        self.bias = rng.standard_normal(OUT).astype(np.float32) * 0.1

    def reference(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        emb = self.embedding[input_ids]
        mask = attention_mask.astype(np.float32)[..., None]
        mean = (emb * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        return np.tanh(mean @ self.weight + self.bias)

    def write_onnx(self, path: Path) -> Path:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        nodes = [
            helper.make_node("Gather", ["emb", "input_ids"], ["tok"]),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
            helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
            helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
            helper.make_node("Max", ["count", "eps"], ["count_safe"]),
            helper.make_node("Div", ["summed", "count_safe"], ["mean"]),
            helper.make_node("MatMul", ["mean", "w"], ["proj"]),
            helper.make_node("Add", ["proj", "b"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["embedding"]),
        ]
        inits = [
            numpy_helper.from_array(self.embedding, "emb"),
            numpy_helper.from_array(self.weight, "w"),
            numpy_helper.from_array(self.bias, "b"),
            numpy_helper.from_array(np.array([2], np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.array([1e-9], np.float32), "eps"),
        ]
        graph = helper.make_graph(
            nodes, "tiny_encoder",
            [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
             helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", OUT])],
            inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        return path

    @staticmethod
    def inputs(batch: int, seq: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        ids = rng.integers(0, VOCAB, size=(batch, seq), dtype=np.int64)
        mask = np.ones((batch, seq), np.int64)
        for row in range(batch):  # ragged real lengths, padded like a tokenizer does
            mask[row, int(rng.integers(seq // 2, seq + 1)):] = 0
        return {"input_ids": ids, "attention_mask": mask}


# A Python-backend model like the builder's repository-python/ model.py, plus the hold switch.
FIXTURE_MODEL_PY = textwrap.dedent('''\
    """Test fixture: ONNX Runtime on ./model.onnx, one run per batch, optional hold."""
    import json
    import os
    import time

    import numpy as np
    import onnxruntime as ort
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def initialize(self, args):
            config = json.loads(args["model_config"])
            params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
            self.hold_file = params.get("hold_file", "")
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

        def execute(self, requests):
            if self.hold_file and os.path.exists(self.hold_file):
                open(self.hold_file + ".busy", "w").close()  # tells the test we are executing
                deadline = time.monotonic() + 120
                while os.path.exists(self.hold_file) and time.monotonic() < deadline:
                    time.sleep(0.005)
            ids = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy() for r in requests]
            masks = [pb_utils.get_input_tensor_by_name(r, "attention_mask").as_numpy() for r in requests]
            seq = max(a.shape[1] for a in ids)
            pad = lambda a: np.pad(a, ((0, 0), (0, seq - a.shape[1])))
            out = self.session.run(["embedding"], {
                "input_ids": np.concatenate([pad(a) for a in ids]).astype(np.int64),
                "attention_mask": np.concatenate([pad(a) for a in masks]).astype(np.int64),
            })[0]
            responses, start = [], 0
            for a in ids:
                rows = out[start:start + a.shape[0]]
                start += a.shape[0]
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("embedding", rows)]))
            return responses
''')


def fixture_config(name: str, *, max_batch_size: int = 8, hold_file: str | None = None,
                   dynamic_batching: bool = True, queue_delay_us: int = 0):
    """The fixture's ``ModelConfig``, built through Triton's protobuf (never a text template)."""
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = mc.ModelConfig(name=name, backend="python", max_batch_size=max_batch_size)
    for tensor_name in ("input_ids", "attention_mask"):
        tensor = cfg.input.add()
        tensor.name, tensor.data_type = tensor_name, mc.TYPE_INT64
        tensor.dims.append(-1)
    out = cfg.output.add()
    out.name, out.data_type = "embedding", mc.TYPE_FP32
    out.dims.append(OUT)
    group = cfg.instance_group.add()
    group.kind, group.count = mc.ModelInstanceGroup.KIND_CPU, 1
    if dynamic_batching:
        cfg.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
        cfg.dynamic_batching.SetInParent()
    if hold_file:
        cfg.parameters["hold_file"].string_value = hold_file
    return cfg


def write_fixture_repo(root: Path, onnx_path: Path, name: str = "tiny", **config_kwargs) -> Path:
    """``root/<name>/{config.pbtxt,1/model.py,1/model.onnx}``; returns ``root``."""
    from google.protobuf import text_format

    version = root / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, version / "model.onnx")
    (version / "model.py").write_text(FIXTURE_MODEL_PY)
    (root / name / "config.pbtxt").write_text(
        text_format.MessageToString(fixture_config(name, **config_kwargs)))
    return root


@pytest.fixture
def make_repo(tiny_onnx: Path, tmp_path: Path) -> Callable[..., Path]:
    """``make_repo(name="tiny", **fixture_config kwargs)`` -> a fresh repository root."""
    counter = iter(range(1000))

    def make(name: str = "tiny", **kwargs) -> Path:
        return write_fixture_repo(tmp_path / f"repo{next(counter)}", tiny_onnx, name, **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_encoder() -> TinyEncoder:
    return TinyEncoder()


@pytest.fixture(scope="session")
def tiny_onnx(tiny_encoder: TinyEncoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_module("onnx")
    return tiny_encoder.write_onnx(tmp_path_factory.mktemp("onnx") / "model.onnx")


# --------------------------------------------------------------------------------------------
# Real servers
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def triton_installed() -> None:
    from optimodel.triton.local import TritonError, triton_layout

    try:
        triton_layout()
    except TritonError as exc:
        need(False, f"no local Triton: {exc}")


@pytest.fixture
def start_triton(triton_installed: None) -> Iterator[Callable[..., "LocalTriton"]]:  # noqa: F821
    """Start ``LocalTriton``s; every one started is stopped (and its log removed) afterwards."""
    from optimodel.triton.local import LocalTriton

    started: list[LocalTriton] = []

    def start(repository: Path, models: list[str], **kwargs) -> LocalTriton:
        triton = LocalTriton(repository, models, **kwargs)
        started.append(triton)
        return triton.start()

    yield start
    for triton in started:
        triton.close()


class Holder:
    """Keeps ``K`` requests waiting in Triton's queue behind one held execution."""

    def __init__(self, triton, model: str, hold_file: Path) -> None:
        self.triton, self.model, self.hold_file = triton, model, hold_file
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.results: list[np.ndarray] = []

    def _send(self, seed: int) -> None:
        import tritonclient.http as httpclient

        try:
            client = httpclient.InferenceServerClient(self.triton.endpoints.http,
                                                      connection_timeout=180, network_timeout=180)
            feeds = TinyEncoder.inputs(1, seed=seed)
            inputs = []
            for name, array in feeds.items():
                tensor = httpclient.InferInput(name, list(array.shape), "INT64")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            self.results.append(client.infer(self.model, inputs).as_numpy("embedding"))
            client.close()
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.errors.append(exc)

    def send(self, count: int) -> None:
        for _ in range(count):
            thread = threading.Thread(target=self._send, args=(len(self.threads),), daemon=True)
            thread.start()
            self.threads.append(thread)

    def wait_pending(self, expected: float, timeout: float = 30.0) -> float:
        from optimodel.triton.metrics import PENDING_REQUESTS_METRIC

        deadline = time.monotonic() + timeout
        value = -1.0
        while time.monotonic() < deadline:
            value = self.triton.metric(PENDING_REQUESTS_METRIC, self.model)
            if value == expected:
                return value
            time.sleep(0.05)
        raise AssertionError(f"pending requests stayed {value}, expected {expected}")

    @property
    def busy_file(self) -> Path:
        return self.hold_file.with_name(self.hold_file.name + ".busy")

    def hold(self, queued: int) -> None:
        """One request executing (held in model.py), ``queued`` more waiting: pending == queued."""
        self.busy_file.unlink(missing_ok=True)
        self.hold_file.touch()
        self.send(1)
        deadline = time.monotonic() + 30
        while not self.busy_file.exists():
            assert time.monotonic() < deadline, "the first request never reached model.py"
            assert not self.errors, self.errors
            time.sleep(0.02)
        self.send(queued)
        self.wait_pending(float(queued))

    def release(self, timeout: float = 60.0) -> None:
        self.hold_file.unlink(missing_ok=True)
        self.busy_file.unlink(missing_ok=True)
        for thread in self.threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "requests did not finish"
        assert not self.errors, self.errors


@pytest.fixture
def holders() -> Iterator[Callable[..., Holder]]:
    """Holders whose hold files are removed (requests released) whatever the test's outcome."""
    made: list[Holder] = []

    def make(triton, model: str, hold_file: Path) -> Holder:
        holder = Holder(triton, model, hold_file)
        made.append(holder)
        return holder

    yield make
    for holder in made:
        holder.hold_file.unlink(missing_ok=True)
        holder.busy_file.unlink(missing_ok=True)
        for thread in holder.threads:
            thread.join(10)


class Prometheus:
    """A real Prometheus server scraping static targets, with its own config and TSDB dir."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary, self.workdir = binary, workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, targets: list[tuple[str, dict[str, str]]], scrape_interval: str = "1s") -> "Prometheus":
        import yaml

        from optimodel.triton.local import free_port

        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [{
                "job_name": "triton",
                "metrics_path": "/metrics",
                # Labels a PodMonitor attaches through relabeling (namespace, pod).
                "static_configs": [{"targets": [target], "labels": labels}
                                   for target, labels in targets],
            }],
        }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log = self.workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, f"--config.file={path}", f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-3000:]}")
            try:
                import requests

                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready: {self.log.read_text()[-3000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql: str) -> list[dict]:
        import requests

        resp = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = resp.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, promql: str, predicate: Callable[[list[dict]], bool], timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if predicate(result):
                return result
            time.sleep(0.25)
        raise AssertionError(f"{promql} -> {result}")

    def stop(self) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait()
            self.process = None


@pytest.fixture
def prometheus() -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    need(binary is not None, "prometheus is not installed (run hack/install-prometheus.sh)")
    workdir = Path(tempfile.mkdtemp(prefix="optimodel-prometheus-"))
    server = Prometheus(binary, workdir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
