"""Choosing the engine: a pure function of the candidates' measurements.

Kept apart from the pipeline so that the rule can be read in one place and tested as a table
(``tests/builder/test_selection.py``) without building anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from optimodel.api.report import AccuracyResult, Candidate
from optimodel.builder import verify
from optimodel.builder.errors import BuildError

TIE = 0.05  # throughputs within 5% of the fastest count as equal; accuracy breaks the tie


@dataclass(frozen=True)
class Selection:
    chosen: Candidate
    faster_but_failed: tuple[str, ...]  # candidates that were faster but missed the gate
    runners_up: tuple[Candidate, ...] = ()  # the other passing candidates, in the same preference

    @property
    def ranked(self) -> tuple[Candidate, ...]:
        """Every passing candidate, most preferred first (the rule applied again to the rest)."""
        return (self.chosen, *self.runners_up)

    @property
    def warning(self) -> str | None:
        if not self.faster_but_failed:
            return None
        return ("faster candidates failed the accuracy gate and were not selected: "
                + ", ".join(self.faster_but_failed))


def _throughput(c: Candidate) -> float:
    assert c.performance is not None
    return c.performance.headline.throughput


def select(candidates: Sequence[Candidate], metric: str, tie: float = TIE) -> Selection:
    """The fastest candidate that ran, was timed and passed the gate.

    Throughputs within ``tie`` of the fastest are measurement noise (the benchmark's stability
    bar is 10%), so among those the most accurate wins rather than a coin toss of the last timing
    window; on an exact accuracy tie the earlier candidate (the table's order: the simpler
    recipe) wins. Raises ``AccuracyGateFailed`` when nothing qualifies.
    """
    passing = [c for c in candidates if c.status == "OK" and c.accuracy is not None
               and c.accuracy.passed and c.performance is not None]
    if not passing:
        raise BuildError("AccuracyGateFailed", "no candidate passes the accuracy gate")
    fastest = max(_throughput(c) for c in passing)
    ties = [c for c in passing if _throughput(c) >= (1 - tie) * fastest]
    lower = metric in verify.LOWER_IS_BETTER
    # min/max return the first of equals: table order decides an exact accuracy tie.
    chosen = min(ties, key=lambda c: c.accuracy.value) if lower else max(ties, key=lambda c: c.accuracy.value)
    faster_but_failed = tuple(
        c.name for c in candidates
        if c is not chosen and c.performance is not None and c.accuracy is not None
        and not c.accuracy.passed and _throughput(c) > _throughput(chosen))
    rest = [c for c in passing if c is not chosen]
    runners_up = (select(rest, metric, tie).ranked if rest else ())
    return Selection(chosen, faster_but_failed, runners_up)


@dataclass(frozen=True)
class Confirmed:
    chosen: Candidate
    accuracy: AccuracyResult  # on the report set: what the report publishes
    warning: str | None = None


def confirm(ranked: Sequence[Candidate], measure: Callable[[Candidate], AccuracyResult],
            threshold: float) -> Confirmed:
    """The first of ``ranked`` whose accuracy on the report set (``measure``) still passes the gate.

    An engine that passed the selection set by luck is not shipped: the next in preference is
    measured instead (lazily: usually only the first is), and the warning names both numbers of
    each one passed over, since that second look uses the report set for a choice. None holding
    is ``AccuracyGateFailed`` with every number.
    """
    missed = []
    for candidate in ranked:
        result = measure(candidate)
        if result.passed:
            warning = (f"{'; '.join(missed)}: selected {candidate.name} instead (report set {result.value:.6g}); "
                       "its reported accuracy rests on a set used for that one choice") if missed else None
            return Confirmed(candidate, result, warning)
        picked = candidate.accuracy
        assert picked is not None
        missed.append(f"{candidate.name} passed the gate on the selection set ({picked.metric} {picked.value:.6g}, "
                      f"{picked.samples} samples) but not on the separate report set ({result.value:.6g}, "
                      f"{result.samples} samples)")
    raise BuildError("AccuracyGateFailed", f"{'; '.join(missed) or 'no candidate'} (threshold {threshold}): "
                     "no candidate's accuracy held on samples it was not chosen on")
