"""Typed pipeline steps: each returns OK / FAIL / SKIPPED with its timing, and logs progress.

Borrowed from Triton Model Navigator: a build is a sequence of named steps whose results are
typed values, not side effects, so the report can say exactly what ran, what was skipped and
why, and how long each part took. A step skips itself by raising ``Skip``; it fails by raising
``BuildError`` (or anything else, which the CLI turns into ``InternalError``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Generic, Literal, TypeVar

from optimodel.api.report import StepTiming

log = logging.getLogger("optimodel.builder")

T = TypeVar("T")
StepStatus = Literal["OK", "FAIL", "SKIPPED"]


class Skip(Exception):
    """Raised inside a step that does not apply; the message is the reason shown in the report."""


@dataclass(frozen=True)
class StepResult(Generic[T]):
    """What one step produced: its value (None unless OK), status, timing and a one-line detail."""

    step: str
    status: StepStatus
    value: T | None
    seconds: float
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "OK"


class StepRunner:
    """Runs steps in order, recording a ``StepTiming`` for each (the report's ``steps``)."""

    def __init__(self) -> None:
        self.timings: list[StepTiming] = []

    def run(self, name: str, fn: Callable[[], T],
            describe: Callable[[T], str | None] | None = None) -> StepResult[T]:
        log.info("step %s: started", name)
        start = time.perf_counter()
        try:
            value = fn()
        except Skip as skip:
            return self._record(StepResult(name, "SKIPPED", None, time.perf_counter() - start, str(skip)))
        except BaseException as exc:
            self._record(StepResult(name, "FAIL", None, time.perf_counter() - start, str(exc)[:500]))
            raise
        detail = describe(value) if describe else None
        return self._record(StepResult(name, "OK", value, time.perf_counter() - start, detail))

    def _record(self, result: StepResult[T]) -> StepResult[T]:
        self.timings.append(StepTiming(step=result.step, status=result.status,
                                       seconds=round(result.seconds, 3), detail=result.detail))
        level = logging.WARNING if result.status == "FAIL" else logging.INFO
        log.log(level, "step %s: %s in %.1fs%s", result.step, result.status, result.seconds,
                f" ({result.detail})" if result.detail else "")
        return result
