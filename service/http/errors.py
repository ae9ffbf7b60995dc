"""The one table from domain errors to HTTP: status code and headers. Every HTTP response
for an error, from the fast path and from FastAPI alike, is built here; a gRPC edge maps the
same tree (``service.errors``) to its own codes.
"""

from __future__ import annotations

from typing import Any

import orjson

from service import errors as e
from service.protocol.schemas import ErrorBody


class MethodNotAllowed(e.NNServeError):
    """An HTTP method the route does not take (an edge error: no other transport has it)."""


#: The table. The first entry the error is an instance of decides (subclasses inherit).
STATUS: tuple[tuple[type[e.NNServeError], int, str], ...] = (
    (e.InvalidInput, 400, "bad input: which field, what was expected, what came"),
    (e.Unauthorized, 401, "no valid API key (when on), or wrong management token"),
    (e.Forbidden, 403, "management API off (no NNSERVE_ADMIN_TOKEN)"),
    (e.ModelNotFound, 404, "unknown model, version or prediction id"),
    (MethodNotAllowed, 405, "wrong HTTP method"),
    (e.Conflict, 409, "feedback contradicting recorded feedback"),
    (e.RequestTooLarge, 413, "body over NNSERVE_MAX_BODY_BYTES"),
    (e.ModelNotReady, 503, "not ready"),
    (e.Overloaded, 503, "queue full (Retry-After)"),
    (e.DeadlineExceeded, 504, "deadline passed"),
)


def status_of(exc: e.NNServeError) -> int:
    for kind, status, _ in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, described from the table."""
    return {
        status: {
            "model": ErrorBody,
            "description": "; ".join(text for _, code, text in STATUS if code == status),
        }
        for status in statuses
    }


def headers_of(exc: e.NNServeError) -> dict[str, str]:
    if isinstance(exc, e.Overloaded):
        return {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, e.Unauthorized):
        return {"WWW-Authenticate": "Bearer"}
    if isinstance(exc, MethodNotAllowed):
        return {"Allow": "POST"}
    return {}


def error_body(exc: e.NNServeError) -> bytes:
    """``{"error": "..."}``, as the Open Inference Protocol says."""
    return orjson.dumps({"error": exc.message})


#: What the model routes can answer besides 200, and what the management routes add.
ERRORS = documented(400, 404, 413, 503, 504)
ADMIN_ERRORS = documented(400, 401, 403, 404, 503)
