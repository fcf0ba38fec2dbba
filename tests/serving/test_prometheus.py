"""The autoscalers' exact queries, evaluated by a real Prometheus scraping real Tritons.

Two Triton servers play two pods of one model (``ml/minilm-a``, ``ml/minilm-b``); the scrape
attaches ``namespace`` and ``pod`` as a PodMonitor's relabeling does. Each server's queue is
held at a known depth (3 and 5 pending requests, see conftest), so the expected answers are
exact: KEDA's query sums to 8 (4 per replica for the HPA), the adapter's per-pod query returns
3 and 5 -- and each equals what Triton's own metrics endpoint reports at the same time.
"""

from __future__ import annotations

import threading

import pytest

from optimodel.triton.local import LocalTriton
from optimodel.triton.metrics import (
    PENDING_REQUESTS_METRIC,
    adapter_rule,
    keda_query,
    render_adapter_query,
)

pytestmark = pytest.mark.triton

NAMESPACE, MODEL = "ml", "minilm"
DEPTHS = {"minilm-a": 3, "minilm-b": 5}


def by_pod(result: list[dict]) -> dict[str, float]:
    return {r["metric"].get("pod", ""): float(r["value"][1]) for r in result}


def scalar(result: list[dict]) -> float | None:
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_keda_and_adapter_queries_on_real_prometheus(start_triton, make_repo, holders, prometheus,
                                                     tmp_path):
    holds = {pod: tmp_path / f"hold-{pod}" for pod in DEPTHS}
    repos = {pod: make_repo(MODEL, max_batch_size=4, hold_file=str(holds[pod])) for pod in DEPTHS}
    servers: dict[str, LocalTriton] = {}
    errors: list[BaseException] = []

    def start(pod: str) -> None:  # two cold starts in parallel: half the wall time
        try:
            servers[pod] = start_triton(repos[pod], [MODEL])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(pod,)) for pod in DEPTHS]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors

    prometheus.start([
        (f"127.0.0.1:{servers[pod].endpoints.metrics_port}", {"namespace": NAMESPACE, "pod": pod})
        for pod in DEPTHS
    ])
    keda = keda_query(NAMESPACE, MODEL)
    adapter_both = render_adapter_query(adapter_rule(), NAMESPACE, list(DEPTHS))
    adapter_one = render_adapter_query(adapter_rule(), NAMESPACE, ["minilm-b"])
    adapter_model = render_adapter_query(adapter_rule(), NAMESPACE, list(DEPTHS), model=MODEL)

    # Idle: both pods scraped, nothing pending.
    prometheus.wait_for(adapter_both, lambda r: by_pod(r) == {"minilm-a": 0, "minilm-b": 0})
    assert scalar(prometheus.query(keda)) == 0

    held = {pod: holders(servers[pod], MODEL, holds[pod]) for pod in DEPTHS}
    for pod, depth in DEPTHS.items():
        held[pod].hold(queued=depth)

    prometheus.wait_for(keda, lambda r: scalar(r) == 8)
    # Prometheus agrees with Triton's own endpoint, read now (the queues are held still).
    direct = {pod: servers[pod].metric(PENDING_REQUESTS_METRIC, MODEL) for pod in DEPTHS}
    assert direct == {"minilm-a": 3, "minilm-b": 5}
    assert by_pod(prometheus.query(adapter_both)) == direct
    assert by_pod(prometheus.query(adapter_model)) == direct
    assert by_pod(prometheus.query(adapter_one)) == {"minilm-b": 5}
    assert scalar(prometheus.query(keda)) == sum(direct.values())
    # What KEDA's AverageValue and the HPA's Pods metric both average to: 4 per replica.
    assert scalar(prometheus.query(keda)) / len(DEPTHS) == 4
    # Other namespaces and models are not counted.
    assert prometheus.query(keda_query("other", MODEL)) == []
    assert prometheus.query(keda_query(NAMESPACE, "other")) == []

    for holder in held.values():
        holder.release()
    prometheus.wait_for(keda, lambda r: scalar(r) == 0)
    assert by_pod(prometheus.query(adapter_both)) == {"minilm-a": 0, "minilm-b": 0}
