"""The one table from domain errors to what each edge answers: an HTTP status and a gRPC
status code (by name: this layer imports no transport). ``service.http.errors`` and
``service.grpc.status`` read it; neither has a mapping of its own.

The gRPC column follows the HTTP one as gRPC's own mapping does (Google API design guide:
400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND, 409
ALREADY_EXISTS, 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED); a body over the size limit is
RESOURCE_EXHAUSTED, as grpc answers for a message over its own limit.
"""

from __future__ import annotations

from service import errors as e

#: (error, HTTP status, gRPC code name, what it means). The first entry the error is an
#: instance of decides (subclasses inherit); anything else: 500 / INTERNAL.
CODES: tuple[tuple[type[e.NNServeError], int, str, str], ...] = (
    (e.InvalidInput, 400, "INVALID_ARGUMENT",
     "bad input: which field, what was expected, what came"),
    (e.Unauthorized, 401, "UNAUTHENTICATED",
     "no valid API key (when on), or wrong management token"),
    (e.Forbidden, 403, "PERMISSION_DENIED", "management API off (no NNSERVE_ADMIN_TOKEN)"),
    (e.ModelNotFound, 404, "NOT_FOUND", "unknown model, version or prediction id"),
    (e.Conflict, 409, "ALREADY_EXISTS", "feedback contradicting recorded feedback"),
    (
        e.RequestTooLarge,
        413,
        "RESOURCE_EXHAUSTED",
        "body over NNSERVE_MAX_BODY_BYTES, or an explanation over NNSERVE_EXPLAIN_MAX_SAMPLES",
    ),
    (e.ModelNotReady, 503, "UNAVAILABLE", "not ready"),
    (e.Overloaded, 503, "UNAVAILABLE", "queue full (Retry-After)"),
    (e.DeadlineExceeded, 504, "DEADLINE_EXCEEDED", "deadline passed"),
)  # fmt: skip
