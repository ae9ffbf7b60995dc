"""The outermost ASGI layer: observes every HTTP request (id, metrics, log line, last-resort
500), whichever of the fast path or FastAPI answers it."""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from itertools import count
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.requests import Exchange
from service.http.responses import JSON
from service.observability.logs import request_id
from service.observability.metrics import Metrics

log = logging.getLogger("nnserve.http")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def protocol_of(path: str) -> str:
    if path.startswith("/v2"):
        return "v2"
    if path.startswith("/v1"):  # explanations apart, so that v1 latency is predictions' alone
        return "explain" if path.endswith(":explain") else "v1"
    return "metrics" if path == "/metrics" else "other"


def _line_fields(record: Exchange, status: int, seconds: float) -> dict[str, object]:
    """The access log line's fields; ``key``: the API key's id when the route needs one
    (``service.http.auth``), never the key itself."""
    fields: dict[str, object] = {"status": status, "seconds": round(seconds, 6)}
    if record.key:
        fields["key"] = record.key
    return fields


class RequestObserver:
    """Pure ASGI middleware: the per-request choke point for metrics and logging.

    It puts an :class:`Exchange` into ``scope["nnserve"]``; the route that resolves a model
    names it there, so the labels only ever carry names that exist (bounded cardinality).
    Labelled metric children are cached: ``.labels()`` is not free and this runs on every
    request.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._ids = count(1)
        self._id_prefix = os.urandom(4).hex()
        self._children: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
        # in-flight counts are plain ints, read by the gauge at scrape time (no lock per
        # request); with worker processes the gauge's shared file is what a scrape reads
        self._in_flight = dict.fromkeys(("v1", "v2", "explain", "metrics", "other"), 0)
        self._shared = {p: metrics.in_flight.labels(p) for p in self._in_flight}
        if not metrics.multiprocess:
            for protocol, child in self._shared.items():
                child.set_function(functools.partial(self._in_flight.__getitem__, protocol))
            self._shared = {}

    def _request_id(self, scope: Scope) -> str:
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                incoming: str = value.decode("latin-1")
                if _SAFE_ID.fullmatch(incoming):
                    return incoming
        return f"{self._id_prefix}{next(self._ids):012x}"

    def _observe(
        self, protocol: str, model: str, version: str, status: int, seconds: float
    ) -> None:
        key = (protocol, model, version, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.metrics.requests.labels(protocol, model, version, str(status)),
                self.metrics.request_duration.labels(protocol, model, version),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = self._request_id(scope)
        token = request_id.set(rid)
        protocol = protocol_of(scope["path"])
        record = Exchange(rid, protocol)
        scope["nnserve"] = record
        self._in_flight[protocol] += 1
        if self._shared:
            self._shared[protocol].inc()
        status = 500
        response_started = False
        rid_header = (b"x-request-id", rid.encode())

        async def observed_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [*message.get("headers", []), rid_header]
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
                            rid_header,
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            self._in_flight[protocol] -= 1
            if self._shared:
                self._shared[protocol].dec()
            seconds = time.perf_counter() - started
            self._observe(protocol, record.model, record.version, status, seconds)
            if status >= 400 and status != 500:
                log.info(
                    "%s %s -> %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra=_line_fields(record, status, seconds),
                )
            elif log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s -> %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra=_line_fields(record, status, seconds),
                )
            request_id.reset(token)
