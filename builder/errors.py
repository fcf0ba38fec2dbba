"""Typed build failures: every way a build can fail maps to one documented reason and exit code.

The operator reads the reason from the termination message and the exit code from the pod, so a
failure must never surface as a bare traceback. Steps raise ``BuildError`` with the reason that
describes *what the user can fix*; anything unexpected becomes ``InternalError``.
"""

from __future__ import annotations

from optimodel.api.report import EXIT_CODES, FailureReason


class BuildError(Exception):
    """A build failure with its contract reason (see ``EXIT_CODES``)."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        if reason not in EXIT_CODES:
            raise ValueError(f"unknown failure reason {reason!r}")
        self.reason: FailureReason = reason
        self.message = message

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.reason]

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        "out of memory" in str(exc).lower())


def wrap(reason: FailureReason, message: str, exc: BaseException) -> BuildError:
    """A ``BuildError`` for a caught exception: ``reason``, unless it was really out of memory."""
    if is_out_of_memory(exc):
        return BuildError("OutOfMemory", f"out of memory: {message}")
    return BuildError(reason, message)


def classify(exc: BaseException) -> BuildError:
    """Turn any exception into a ``BuildError``; out-of-memory is recognised wherever it comes from."""
    if isinstance(exc, BuildError):
        return exc
    if is_out_of_memory(exc):
        return BuildError("OutOfMemory", f"out of memory: {exc}".strip())
    return BuildError("InternalError", f"{type(exc).__name__}: {exc}")
