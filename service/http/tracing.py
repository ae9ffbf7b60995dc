"""The server span of every HTTP request, while tracing is on (``service.observability.tracing``).

:class:`TracingEdge` sits outside :class:`~service.http.edge.RequestObserver`, and only when
tracing is on (``build`` adds it; imported only then): off, the chain is what it was. It
continues an incoming W3C ``traceparent`` (``OTEL_PROPAGATORS`` picks other formats), makes
the request's span the current one (the prediction routes hand it down in the
``RequestContext``; the batch a request runs in joins its trace), puts the trace id on every
log line of the request (the access line included), and answers with a ``traceresponse``
header (W3C Trace Context Level 2: ``00-<trace id>-<span id>-<flags>``), so that a client
that sent no ``traceparent`` can find its trace.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context, propagate
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.requests import Exchange
from service.observability import tracing
from service.observability.logs import trace_id

#: Where the fast path names the route template it matched (FastAPI's routes: ``route``).
ROUTE = "nnserve.route"


class TracingEdge:
    """Pure ASGI middleware around the request observer: one server span per HTTP request,
    the current span while the request runs (so that its log lines and its batch find it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        #: header names the configured propagators read (traceparent, tracestate, baggage)
        self.fields = {f.lower().encode("latin-1") for f in propagate.get_global_textmap().fields}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        tracer = tracing.tracer
        if scope["type"] != "http" or tracer is None:
            await self.app(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope["headers"]
            if k in self.fields
        }
        parent = propagate.extract(carrier) if carrier else Context()  # else: a new trace
        method: str = scope["method"]
        attributes = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
        }
        span = tracer.start_span(method, parent, SpanKind.SERVER, attributes)
        ids = span.get_span_context()
        token = context.attach(set_span_in_context(span, parent))
        trace_token = trace_id.set(format(ids.trace_id, "032x"))
        header = (
            b"traceresponse",
            f"00-{ids.trace_id:032x}-{ids.span_id:016x}-{ids.trace_flags:02x}".encode(),
        )
        status = 500

        async def traced_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, traced_send)
        except BaseException as exc:  # the observer answers errors: this is cancellation
            span.record_exception(exc)
            raise
        finally:
            if span.is_recording():
                _finish(span, scope, method, status)
            span.end()
            trace_id.reset(trace_token)
            context.detach(token)


def _finish(span: Span, scope: Scope, method: str, status: int) -> None:
    """What is known once the request is answered: route, status, request id, model (set in
    one call: each call takes the span's lock)."""
    attributes: dict[str, Any] = {"http.response.status_code": status}
    route = scope.get(ROUTE) or getattr(scope.get("route"), "path", None)
    if route:
        span.update_name(f"{method} {route}")
        attributes["http.route"] = route
    record: Exchange | None = scope.get("nnserve")
    if record is not None:
        attributes["nnserve.request_id"] = record.request_id
        if record.model:
            attributes["nnserve.model"] = record.model
            attributes["nnserve.version"] = int(record.version)
    span.set_attributes(attributes)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
