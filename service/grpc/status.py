"""Domain errors → gRPC status codes: the gRPC column of the one table
(``service.protocol.errors``), which the HTTP edge reads too."""

from __future__ import annotations

import grpc

from service import errors as e
from service.protocol.errors import CODES

_CODES = tuple((kind, grpc.StatusCode[name], status) for kind, status, name, _ in CODES)


def code_of(exc: e.NNServeError) -> tuple[grpc.StatusCode, int]:
    """The gRPC code, and the HTTP status it shares a row with (the requests metric's
    ``code`` label, so that alerts on 5xx see both protocols)."""
    for kind, code, status in _CODES:
        if isinstance(exc, kind):
            return code, status
    return grpc.StatusCode.INTERNAL, 500
