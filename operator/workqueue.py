"""A rate-limited, de-duplicating work queue of object keys, as client-go's ``workqueue``.

Why our own queue and not kopf's retrying handlers: kopf's ``on.create/update/resume`` handlers
retry, but they store their progress in annotations on the user's object (drift for Argo CD, a
write per change) and are change-triggered, not level-triggered. kopf's ``on.event`` handlers do
neither, but drop a handler's exception. So kopf watches and enqueues keys; this queue gives the
properties a controller needs:

- a key is never reconciled by two workers at once (a key added while it is being processed is
  marked dirty and handed out again once ``done``);
- a key added many times while waiting is reconciled once (events of a burst collapse);
- failures are retried with capped exponential backoff and jitter, per key (``add_rate_limited``),
  and the backoff resets on success (``forget``);
- ``add_after`` schedules a key (periodic resync, a retry at a known time).
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Callable, Hashable


class Backoff:
    """Per-key capped exponential backoff with jitter: base * 2^failures, at most ``cap``."""

    def __init__(self, base: float = 1.0, cap: float = 300.0, jitter: float = 0.2,
                 rng: random.Random | None = None):
        self.base, self.cap, self.jitter = base, cap, jitter
        self.failures: dict[Hashable, int] = {}
        self._rng = rng or random.Random()

    def next_delay(self, key: Hashable) -> float:
        """Delay before the next retry of ``key``; counts one more failure."""
        n = self.failures.get(key, 0)
        self.failures[key] = n + 1
        delay = min(self.cap, self.base * (2 ** n))
        return delay * (1 + self.jitter * (2 * self._rng.random() - 1))

    def forget(self, key: Hashable) -> None:
        self.failures.pop(key, None)

    def attempts(self, key: Hashable) -> int:
        return self.failures.get(key, 0)


class WorkQueue:
    """Thread-safe queue of keys with de-duplication, delayed adds and per-key backoff."""

    def __init__(self, backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic):
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: list[Hashable] = []
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._waiting: list[tuple[float, int, Hashable]] = []  # heap of (due, seq, key)
        self._due: dict[Hashable, float] = {}  # earliest scheduled time per waiting key
        self._seq = 0
        self._shutdown = False

    # --- producers ---------------------------------------------------------------------------

    def add(self, key: Hashable) -> None:
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: Hashable) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: Hashable, delay: float) -> None:
        """Add ``key`` once ``delay`` seconds have passed (an earlier schedule wins)."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            due = self._clock() + delay
            if self._due.get(key, float("inf")) <= due:
                return
            self._due[key] = due
            self._seq += 1
            heapq.heappush(self._waiting, (due, self._seq, key))
            self._cond.notify()

    def add_rate_limited(self, key: Hashable) -> float:
        """Re-add ``key`` after its backoff delay; returns the delay."""
        delay = self.backoff.next_delay(key)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        """Reset ``key``'s backoff (its last reconcile succeeded)."""
        self.backoff.forget(key)

    # --- consumers ---------------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key to process (marked processing until ``done``); None on timeout/shutdown."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                self._promote_due_locked()
                if self._queue:
                    key = self._queue.pop(0)
                    self._processing.add(key)
                    self._dirty.discard(key)
                    return key
                if self._shutdown:
                    return None
                wait = self._waiting[0][0] - self._clock() if self._waiting else None
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait if wait is None or wait > 0 else 0)

    def done(self, key: Hashable) -> None:
        """Processing of ``key`` finished; if it was added meanwhile, it is queued again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()

    def _promote_due_locked(self) -> None:
        now = self._clock()
        while self._waiting and self._waiting[0][0] <= now:
            due, _, key = heapq.heappop(self._waiting)
            if self._due.get(key) == due:
                del self._due[key]
                self._add_locked(key)

    # --- lifecycle and introspection ---------------------------------------------------------

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    def __len__(self) -> int:
        """Keys ready to be processed now (the queue-depth metric)."""
        with self._cond:
            return len(self._queue)

    def scheduled(self) -> int:
        """Keys waiting for a delayed add (retries, resyncs)."""
        with self._cond:
            return len(self._due)
