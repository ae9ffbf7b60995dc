"""The HTTP edge: one ASGI middleware observes every request (id, metrics, log line, last-
resort 500), a bounded body reader, and the one table turning domain errors into responses."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BodyTooLarge, InvalidInput, NNServeError
from service.logs import request_id
from service.metrics import Metrics

log = logging.getLogger("nnserve.http")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
JSON = "application/json"


def error_response(exc: NNServeError) -> Response:
    return Response(
        orjson.dumps({"error": exc.message}),
        status_code=exc.status,
        headers=exc.headers,
        media_type=JSON,
    )


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        headers=headers,
        media_type=JSON,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) anything over ``limit`` before or while reading it."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise InvalidInput(f"invalid Content-Length {length!r}")
        if int(length) > limit:
            raise BodyTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")
        return await request.body()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def protocol_of(path: str) -> str:
    if path.startswith("/v2"):
        return "v2"
    if path.startswith("/v1"):
        return "v1"
    return "metrics" if path == "/metrics" else "other"


class RequestObserver:
    """Pure ASGI middleware: the per-request choke point for metrics and logging.

    Handlers put the model and version they resolved into ``scope["nnserve"]`` so the labels
    only ever carry names that exist (bounded cardinality).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode(
            "latin-1"
        )
        rid = incoming if _SAFE_ID.fullmatch(incoming) else uuid.uuid4().hex
        token = request_id.set(rid)
        labels: dict[str, Any] = {"model": "", "version": ""}
        scope["nnserve"] = labels
        labels["request_id"] = rid
        protocol = protocol_of(scope["path"])
        in_flight = self.metrics.in_flight.labels(protocol)
        in_flight.inc()
        status = 500
        response_started = False

        async def observed_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            status = 500
            if not response_started:
                body = orjson.dumps({"error": f"internal error (request id {rid})"})
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", JSON.encode()),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-request-id", rid.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            lease = labels.get("lease")
            if lease is not None:
                lease.leases -= 1
            in_flight.dec()
            seconds = time.perf_counter() - started
            model, version = labels["model"], labels["version"]
            self.metrics.requests.labels(protocol, model, version, str(status)).inc()
            self.metrics.request_duration.labels(protocol, model, version).observe(seconds)
            if status >= 400 and status != 500:
                log.info(
                    "%s %s -> %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={"status": status, "seconds": round(seconds, 6)},
                )
            elif log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s -> %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={"status": status, "seconds": round(seconds, 6)},
                )
            request_id.reset(token)
