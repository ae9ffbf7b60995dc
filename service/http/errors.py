"""Domain errors to HTTP: status code (from the one table, ``service.protocol.errors``, which
the gRPC edge reads too) and headers. Every HTTP response for an error, from the fast path
and from FastAPI alike, is built here.
"""

from __future__ import annotations

from typing import Any

import orjson

from service import errors as e
from service.protocol.errors import CODES
from service.protocol.schemas import ErrorBody


class MethodNotAllowed(e.NNServeError):
    """An HTTP method the route does not take (an edge error: no other transport has it)."""


#: The HTTP column of the one table (``service.protocol.errors``), and the one HTTP-only
#: error. The first entry the error is an instance of decides (subclasses inherit).
STATUS: tuple[tuple[type[e.NNServeError], int, str], ...] = (
    *((kind, status, text) for kind, status, _, text in CODES),
    (MethodNotAllowed, 405, "wrong HTTP method"),
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
