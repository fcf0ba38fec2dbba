"""The work queue's guarantees, with a fake clock: de-duplication, one worker per key, delays,
capped backoff with jitter."""

from __future__ import annotations

import random
import threading

import pytest

from optimodel.operator.workqueue import Backoff, WorkQueue


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_of_adds_is_one_reconcile():
    q = WorkQueue()
    for _ in range(5):
        q.add(("ns", "a"))
    q.add(("ns", "b"))
    assert len(q) == 2
    assert q.get(timeout=0) == ("ns", "a")
    assert q.get(timeout=0) == ("ns", "b")
    assert q.get(timeout=0) is None


def test_a_key_added_while_processing_waits_until_done():
    q = WorkQueue()
    q.add("k")
    assert q.get(timeout=0) == "k"
    q.add("k")  # an event arrives mid-reconcile
    assert q.get(timeout=0) is None, "never handed to a second worker while processing"
    q.done("k")
    assert q.get(timeout=0) == "k", "and reconciled again afterwards"


def test_add_after_waits_and_the_earliest_schedule_wins():
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.add_after("k", 300)  # resync
    q.add_after("k", 5)  # a retry due sooner
    q.add_after("k", 60)  # later than what is scheduled: ignored
    assert q.scheduled() == 1
    assert q.get(timeout=0) is None
    clock.now += 5
    assert q.get(timeout=0) == "k"
    q.done("k")
    clock.now += 400
    assert q.get(timeout=0) is None, "the superseded schedules do not fire again"


def test_backoff_doubles_is_capped_has_jitter_and_resets():
    b = Backoff(base=1, cap=10, jitter=0.2, rng=random.Random(7))
    delays = [b.next_delay("k") for _ in range(6)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 10, 10]):
        assert nominal * 0.8 <= delay <= nominal * 1.2
    assert len({round(d, 6) for d in delays[-2:]}) == 2, "jitter spreads retries of many models"
    assert b.attempts("k") == 6
    b.forget("k")
    assert b.attempts("k") == 0 and b.next_delay("k") <= 1.2


def test_rate_limited_add_is_delayed_by_the_backoff():
    clock = Clock()
    q = WorkQueue(Backoff(base=2, cap=60, jitter=0), clock=clock)
    assert q.add_rate_limited("k") == 2
    assert q.get(timeout=0) is None
    clock.now += 2
    assert q.get(timeout=0) == "k"
    q.done("k")
    assert q.add_rate_limited("k") == 4


def test_workers_block_until_work_arrives_and_shutdown_releases_them():
    q = WorkQueue()
    got = []
    worker = threading.Thread(target=lambda: got.append(q.get(timeout=5)))
    worker.start()
    q.add("k")
    worker.join(5)
    assert got == ["k"]
    waiting = threading.Thread(target=lambda: got.append(q.get()))
    waiting.start()
    q.shutdown()
    waiting.join(5)
    assert not waiting.is_alive() and got[-1] is None


@pytest.mark.parametrize("delay", [0, -1])
def test_non_positive_delay_is_an_immediate_add(delay):
    q = WorkQueue()
    q.add_after("k", delay)
    assert q.get(timeout=0) == "k"
