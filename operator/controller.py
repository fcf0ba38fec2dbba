"""The controller loop: kopf's watch events become keys in a work queue; workers reconcile them.

- Every key is reconciled by one worker at a time; a burst of events collapses into one reconcile.
- A reconcile that raises is retried with capped exponential backoff and jitter, and the model's
  ``Synced`` condition says what failed and when the next try is (one Warning Event per new
  failure, not one per retry).
- A reconcile that succeeds schedules the model's next periodic resync (``resync_seconds``), or
  earlier if it asked for it (a build retry due at a known time).
- Workers run only while this replica leads (``leader``); a standby's queue fills from its own
  watches, so a new leader starts with every model already queued.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from optimodel.operator import metrics
from optimodel.operator.conditions import Desired, with_condition
from optimodel.operator.kube import Kube, describe
from optimodel.operator.reconcile import MODEL_API, Result, now, read_status, reconcile, write_status
from optimodel.operator.settings import OperatorSettings
from optimodel.operator.workqueue import Backoff, WorkQueue

log = logging.getLogger("optimodel.controller")

Key = tuple[str, str]  # (namespace, name)


class Controller:
    """Owns the queue and the worker threads of one operator process."""

    def __init__(self, kube: Kube, settings: OperatorSettings,
                 reconcile_fn: Callable[[Kube, OperatorSettings, str, str], Result | None] = reconcile):
        self.kube, self.settings, self.reconcile_fn = kube, settings, reconcile_fn
        self.queue = WorkQueue(Backoff(settings.retry_base_seconds, settings.retry_max_seconds))
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def enqueue(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))
        metrics.set_gauge("optimodel_workqueue_depth", len(self.queue))

    def start(self) -> None:
        """Start the workers (called once this replica leads)."""
        if self._threads:
            return
        for i in range(self.settings.workers):
            thread = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("%d reconcile workers started", self.settings.workers)

    def stop(self) -> None:
        self._stopping.set()
        self.queue.shutdown()

    def alive(self) -> bool:
        """For the liveness probe: every started worker thread still runs."""
        return all(t.is_alive() for t in self._threads) and not self._stopping.is_set()

    def _work(self) -> None:
        while not self._stopping.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            try:
                self.process(key)
            finally:
                self.queue.done(key)
                metrics.set_gauge("optimodel_workqueue_depth", len(self.queue))

    def process(self, key: Key) -> None:
        """Reconcile one key and schedule what comes next (resync, or a retry with backoff)."""
        namespace, name = key
        started = time.monotonic()
        try:
            result = self.reconcile_fn(self.kube, self.settings, namespace, name)
        except Exception as err:  # noqa: BLE001 - every failure is retried, none is fatal
            delay = self.queue.add_rate_limited(key)
            failures = self.queue.backoff.attempts(key)
            metrics.inc("optimodel_reconcile_total", result="error")
            log.warning("reconcile of %s/%s failed (failure %d), retrying in %.1fs: %s",
                        namespace, name, failures, delay, describe(err),
                        exc_info=log.isEnabledFor(logging.DEBUG))
            self._report_failure(namespace, name, describe(err), delay, failures)
            return
        metrics.inc("optimodel_reconcile_total", result="ok")
        metrics.inc("optimodel_reconcile_seconds_sum", time.monotonic() - started)
        metrics.inc("optimodel_reconcile_seconds_count")
        self.queue.forget(key)
        if result is None:
            return  # the model is gone
        next_in = self.settings.resync_seconds
        if result.requeue_after is not None:
            next_in = min(next_in, max(0.0, result.requeue_after))
        self.queue.add_after(key, next_in)

    def _report_failure(self, namespace: str, name: str, error: str, delay: float, failures: int) -> None:
        """Best effort: say in status (``Synced``) and one Event what failed and when we retry.

        The API may be what is failing; then only the log says it, and the retry goes on.
        """
        try:
            body = self.kube.get(MODEL_API, "OptimizedModel", namespace, name)
            if body is None:
                return
            old = read_status(body)
            message = f"reconcile failed ({failures} in a row), retrying in {delay:.0f}s: {error}"
            conditions = with_condition(old.conditions, Desired("Synced", False, "ReconcileError", message),
                                        now(), body["metadata"].get("generation"))
            write_status(self.kube, body, old, old.model_copy(update={"conditions": conditions}))
        except Exception as err:  # noqa: BLE001
            log.info("could not record the failure of %s/%s in its status: %s", namespace, name, describe(err))
