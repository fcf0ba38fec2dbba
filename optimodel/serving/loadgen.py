"""Concurrent clients against a Triton model, with Triton's own view sampled meanwhile.

Why: the demo and the dynamic-batching benchmark ask the same two questions under a burst --
how fast (throughput, p50/p99 latency, from the client side) and what did the server do
(queue depth = the maximum of ``nv_inference_pending_request_count`` sampled during the burst;
average batch size = delta ``nv_inference_count`` / delta ``nv_inference_exec_count``).
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time
from collections.abc import Sequence

import numpy as np

from optimodel.triton.local import LocalTriton
from optimodel.triton.metrics import (EXECUTION_COUNT_METRIC, INFERENCE_COUNT_METRIC, MODEL_LABEL,
                                      PENDING_REQUESTS_METRIC, metric_value)

_NP_TO_TRITON = {np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32",
                 np.dtype(np.float32): "FP32", np.dtype(np.float16): "FP16",
                 np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "UINT8", np.dtype(np.int8): "INT8"}


@dataclasses.dataclass
class BurstResult:
    requests: int
    seconds: float
    latencies_ms: list[float]
    max_pending: float
    inferences: float  # delta nv_inference_count (samples, batch rows)
    executions: float  # delta nv_inference_exec_count (model executions)
    errors: list[str]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 50)) if self.latencies_ms else float("nan")

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else float("nan")

    @property
    def avg_batch(self) -> float:
        return self.inferences / self.executions if self.executions else 0.0


def make_inputs(client_module, feeds: dict[str, np.ndarray]) -> list:
    inputs = []
    for name, array in feeds.items():
        tensor = client_module.InferInput(name, list(array.shape), _NP_TO_TRITON[array.dtype])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def infer(triton: LocalTriton, model: str, feeds: dict[str, np.ndarray],
          outputs: Sequence[str], protocol: str = "http") -> dict[str, np.ndarray]:
    """One request over ``protocol`` (http or grpc); returns the requested outputs."""
    if protocol == "http":
        import tritonclient.http as client_module

        client = client_module.InferenceServerClient(triton.endpoints.http, network_timeout=300)
    else:
        import tritonclient.grpc as client_module

        client = client_module.InferenceServerClient(triton.endpoints.grpc)
    try:
        result = client.infer(model, make_inputs(client_module, feeds),
                              outputs=[client_module.InferRequestedOutput(o) for o in outputs])
        return {o: result.as_numpy(o) for o in outputs}
    finally:
        client.close()


def burst(triton: LocalTriton, model: str, requests: Sequence[dict[str, np.ndarray]],
          outputs: Sequence[str], concurrency: int = 16, sample_interval: float = 0.01,
          protocol: str = "grpc") -> BurstResult:
    """Send ``requests`` with ``concurrency`` in flight at all times (each request its own call).

    The server sees ``concurrency`` outstanding requests: what Triton's dynamic batcher can
    merge. ``grpc`` (default) keeps them in flight from one thread with ``async_infer``, which
    costs the client far less CPU than ``http`` (one Python thread per client) -- it matters
    when client and server share a small CPU.
    """
    if protocol == "grpc":
        return _burst_grpc(triton, model, requests, outputs, concurrency, sample_interval)
    import tritonclient.http as httpclient

    lock = threading.Lock()
    next_index = iter(range(len(requests)))
    latencies: list[float] = []
    errors: list[str] = []
    start_gate = threading.Barrier(concurrency + 1)

    def client_loop() -> None:
        client = httpclient.InferenceServerClient(triton.endpoints.http, network_timeout=300)
        wanted = [httpclient.InferRequestedOutput(o) for o in outputs]
        try:
            start_gate.wait()
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                inputs = make_inputs(httpclient, requests[index])
                t0 = time.perf_counter()
                try:
                    client.infer(model, inputs, outputs=wanted)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(str(exc)[:300])
                    continue
                elapsed = (time.perf_counter() - t0) * 1000
                with lock:
                    latencies.append(elapsed)
        finally:
            client.close()

    before = _counters(triton, model)
    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    with _Sampler(triton, model, sample_interval) as sampler:
        start_gate.wait()
        t0 = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - t0
    after = _settled_counters(triton, model, before, _rows(requests) if not errors else 0)
    return BurstResult(requests=len(latencies), seconds=seconds, latencies_ms=latencies,
                       max_pending=sampler.max_pending, inferences=after[0] - before[0],
                       executions=after[1] - before[1], errors=errors)


class _Sampler:
    """Samples the pending-request gauge in the background; remembers the maximum."""

    def __init__(self, triton: LocalTriton, model: str, interval: float) -> None:
        self.triton, self.model, self.interval = triton, model, interval
        self.max_pending = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = metric_value(self.triton.metrics_text(), PENDING_REQUESTS_METRIC,
                                     **{MODEL_LABEL: self.model})
                self.max_pending = max(self.max_pending, value)
            except OSError:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _counters(triton: LocalTriton, model: str) -> tuple[float, float]:
    text = triton.metrics_text()
    return (metric_value(text, INFERENCE_COUNT_METRIC, **{MODEL_LABEL: model}),
            metric_value(text, EXECUTION_COUNT_METRIC, **{MODEL_LABEL: model}))


def _settled_counters(triton: LocalTriton, model: str, before: tuple[float, float],
                      rows: float, timeout: float = 5.0) -> tuple[float, float]:
    """Counters once Triton has recorded all ``rows``: clients can get a response a moment
    before the server updates its statistics."""
    deadline = time.monotonic() + timeout
    after = _counters(triton, model)
    while after[0] - before[0] < rows and time.monotonic() < deadline:
        time.sleep(0.05)
        after = _counters(triton, model)
    return after


def _rows(requests: Sequence[dict[str, np.ndarray]]) -> float:
    return float(sum(next(iter(r.values())).shape[0] for r in requests))


def _burst_grpc(triton: LocalTriton, model: str, requests: Sequence[dict[str, np.ndarray]],
                outputs: Sequence[str], concurrency: int, sample_interval: float) -> BurstResult:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.endpoints.grpc)
    wanted = [grpcclient.InferRequestedOutput(o) for o in outputs]
    prepared = [make_inputs(grpcclient, r) for r in requests]
    slots = threading.Semaphore(concurrency)
    done = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    remaining = [len(prepared)]

    def callback(started: float, result, error) -> None:
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            if error is not None:
                errors.append(str(error)[:300])
            else:
                latencies.append(elapsed)
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()
        slots.release()

    before = _counters(triton, model)
    try:
        with _Sampler(triton, model, sample_interval) as sampler:
            t0 = time.perf_counter()
            for inputs in prepared:
                slots.acquire()
                started = time.perf_counter()
                client.async_infer(model, inputs, outputs=wanted,
                                   callback=lambda result, error, s=started: callback(s, result, error))
            if prepared:
                done.wait()
            seconds = time.perf_counter() - t0
    finally:
        client.close()
    after = _settled_counters(triton, model, before, _rows(requests) if not errors else 0)
    return BurstResult(requests=len(latencies), seconds=seconds, latencies_ms=latencies,
                       max_pending=sampler.max_pending, inferences=after[0] - before[0],
                       executions=after[1] - before[1], errors=errors)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
