"""Domain errors and the one table that maps them to HTTP statuses.

    NNServeError
     ├── InvalidInput        400  the request is malformed or does not fit the model
     ├── Unauthorized        401  management call with a missing or wrong token
     ├── Forbidden           403  management API is off (no token configured)
     ├── ModelNotFound       404  unknown model or version
     ├── MethodNotAllowed    405  e.g. GET on an inference route
     ├── Conflict            409  feedback that contradicts feedback already recorded
     ├── BodyTooLarge        413  body over NNSERVE_MAX_BODY_BYTES
     ├── ModelNotReady       503  known, but not loaded (yet, or failed its checks)
     ├── Overloaded          503  queue full; carries Retry-After
     └── DeadlineExceeded    504  waited past its deadline

Anything else is a bug: logged with the request id, answered with a generic 500.
"""

from __future__ import annotations


class NNServeError(Exception):
    status = 500
    headers: dict[str, str] = {}  # noqa: RUF012 - overridden per class, never mutated

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(NNServeError):
    status = 400


class Unauthorized(NNServeError):
    status = 401
    headers = {"WWW-Authenticate": "Bearer"}  # noqa: RUF012


class Forbidden(NNServeError):
    status = 403


class ModelNotFound(NNServeError):
    status = 404


class MethodNotAllowed(NNServeError):
    status = 405


class Conflict(NNServeError):
    status = 409


class BodyTooLarge(NNServeError):
    status = 413


class ModelNotReady(NNServeError):
    status = 503


class Overloaded(NNServeError):
    status = 503

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class DeadlineExceeded(NNServeError):
    status = 504


class LoadError(Exception):
    """A model version failed a load check; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
