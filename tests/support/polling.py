"""Waiting on a real system: poll a predicate until it holds, fail with what was last seen."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    """Return the predicate's first truthy value; AssertionError (naming ``what``) on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
