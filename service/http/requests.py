"""Reading HTTP requests: the edge's per-request record, the body (size-limited), and the
headers that become typed values (deadline, binary header length)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from starlette.types import Receive, Scope

from service.errors import InvalidInput, RequestTooLarge
from service.runtime.model import ServedModel

Headers = dict[bytes, bytes]
TIMEOUT_HEADER = b"x-request-timeout-ms"
BINARY_HEADER = b"inference-header-content-length"


@dataclass(slots=True)
class Exchange:
    """What the edge records about one HTTP request for its metrics and log line: created and
    read by :class:`service.http.edge.RequestObserver`; the route that resolves a model names
    it here (metric labels only ever carry names that exist). Never passed below the edge."""

    request_id: str
    protocol: str
    model: str = ""
    version: str = ""
    #: The API key's id (or missing / invalid) when the route needs one: ``service.http.auth``.
    key: str = ""

    def resolved(self, model: ServedModel) -> None:
        self.model, self.version = model.name, str(model.version)


def exchange(scope: Scope) -> Exchange:
    record: Exchange = scope["nnserve"]
    return record


async def read_body(receive: Receive, content_length: bytes | None, limit: int) -> bytes:
    """The whole body, refusing anything over ``limit`` before or while reading it."""
    if content_length is not None:
        if not content_length.isdigit():
            raise InvalidInput(f"invalid Content-Length {content_length.decode('latin-1')!r}")
        if int(content_length) > limit:
            raise RequestTooLarge(
                f"request body of {int(content_length)} bytes exceeds the limit of {limit}"
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("the client disconnected before sending its whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def deadline(headers: Headers, default_s: float) -> float:
    """Absolute ``perf_counter`` deadline: the ``X-Request-Timeout-Ms`` header, else the
    default (``NNSERVE_REQUEST_TIMEOUT_MS``)."""
    raw = headers.get(TIMEOUT_HEADER)
    timeout = default_s
    if raw is not None:
        try:
            timeout = float(raw) / 1000
        except ValueError:
            timeout = math.nan
        if not (math.isfinite(timeout) and timeout > 0):
            raise InvalidInput(
                "X-Request-Timeout-Ms must be a positive number of milliseconds, "
                f"got {raw.decode('latin-1')!r}"
            )
    return time.perf_counter() + timeout


def binary_header_length(headers: Headers) -> int | None:
    """``Inference-Header-Content-Length``: the JSON header's length when binary tensors
    follow it (the v2 binary tensor data extension)."""
    raw = headers.get(BINARY_HEADER)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(
            f"Inference-Header-Content-Length must be an integer, got {raw.decode('latin-1')!r}"
        ) from None
