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


# Object-store error codes (S3 and compatibles; s3fs turns most into PermissionError with the
# botocore ClientError as its cause) that mean "these credentials were refused", as opposed to
# "there is nothing there" (NoSuchKey, NoSuchBucket, 404: ModelNotFound).
AUTH_ERROR_CODES = frozenset({
    "AccessDenied", "AccountProblem", "AllAccessDisabled", "ExpiredToken", "InvalidAccessKeyId",
    "InvalidClientTokenId", "InvalidSecurity", "InvalidToken", "NotSignedUp", "SignatureDoesNotMatch",
    "TokenRefreshRequired", "UnrecognizedClientException", "Forbidden", "Unauthorized", "401", "403",
})
AUTH_HTTP_STATUSES = frozenset({401, 403})
_NO_CREDENTIALS = frozenset({"NoCredentialsError", "PartialCredentialsError"})  # botocore


def access_denial(exc: BaseException) -> str | None:
    """What refused access, if ``exc`` (or an exception in its cause chain) is a remote store
    rejecting the credentials: an S3 error code (``SignatureDoesNotMatch``), ``HTTP 403`` /
    ``HTTP 401`` (object stores, https sources), or ``no credentials``; else None.

    Only the code or status is returned, never the server's text or request details, so the
    result is safe to put in a termination message.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ in _NO_CREDENTIALS:
            return "no credentials"
        response = getattr(current, "response", None)
        if isinstance(response, dict) and "Error" in response:  # botocore ClientError
            code = str((response.get("Error") or {}).get("Code") or "")
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code in AUTH_ERROR_CODES or status in AUTH_HTTP_STATUSES:
                return code if code and not code.isdigit() else f"HTTP {status or code}"
            return None  # another store error (NoSuchKey, NoSuchBucket, ...): not an auth failure
        status = _http_status(current)
        if status in AUTH_HTTP_STATUSES:
            return f"HTTP {status}"
        current = current.__cause__ or current.__context__
    return None


def _http_status(exc: BaseException) -> int | None:
    """The status of an HTTP error response (aiohttp, which fsspec's https:// filesystem uses)."""
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with fsspec[http]
        return None
    return exc.status if isinstance(exc, aiohttp.ClientResponseError) else None


def classify(exc: BaseException) -> BuildError:
    """Turn any exception into a ``BuildError``; out-of-memory is recognised wherever it comes from."""
    if isinstance(exc, BuildError):
        return exc
    if is_out_of_memory(exc):
        return BuildError("OutOfMemory", f"out of memory: {exc}".strip())
    return BuildError("InternalError", f"{type(exc).__name__}: {exc}")
