"""OpenTelemetry tracing: off unless the standard ``OTEL_*`` variables ask for it.

On when ``OTEL_TRACES_EXPORTER`` names an exporter (anything but ``none``), or when an OTLP
endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
then the exporter is OTLP); ``OTEL_SDK_DISABLED=true`` turns it off whatever else is set.
Everything else is the SDK's own environment handling: the sampler
(``OTEL_TRACES_SAMPLER[_ARG]``), the exporter's endpoint, headers and timeout, the batch
span processor's queue and delay (``OTEL_BSP_*``), ``OTEL_RESOURCE_ATTRIBUTES`` and
``OTEL_SERVICE_NAME`` (default here: ``nnserve``). It needs the ``tracing`` extra
(``opentelemetry-sdk``, ``opentelemetry-exporter-otlp-proto-http``); without it the
service runs untraced and says so once.

Off, it costs nothing: :data:`tracer` is None, the layers check that (one global read per
request or batch) and call nothing here. Each worker process sets tracing up for itself
after the fork (:func:`setup`, from ``create_app``): a batch span processor's export thread
does not survive a fork, and a provider inherited through one is dropped and built anew.

The spans below the HTTP edge (its server span is ``service.http.tracing``): ``queue wait``
per request (admission to its batch's start, recorded after the fact with explicit times),
``batch run`` per onnxruntime run, a child of the first sampled request of the batch and
linked to every request in it, and ``prediction-log write`` (the non-blocking hand-over to
the log writer) under its batch run. No function here is called while :data:`tracer` is
None.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any, NamedTuple

# the API alone (FastAPI brings it along); without it nothing below runs: tracer stays None
with contextlib.suppress(ImportError):
    from opentelemetry.trace import (
        Link,
        Status,
        StatusCode,
        get_current_span,
        set_span_in_context,
    )

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("nnserve.tracing")

#: The tracer while tracing is on in this process; None when off (the hot path's one check).
tracer: Tracer | None = None
_provider: TracerProvider | None = None  # the provider :func:`setup` built (it shuts it down)
_pid = 0  # the process that built it

SERVICE_NAME = "nnserve"
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
#: ``OTEL_TRACES_EXPORTER=otlp`` by ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` → the entry point
#: name of the exporter package (``http/protobuf`` ships with the tracing extra).
_OTLP = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the ``OTEL_*`` variables in ``environ`` turn tracing on."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return any(environ.get(name, "").strip() for name in _ENDPOINTS)


def setup() -> bool:
    """Turn tracing on in this process if the environment asks for it; True if this call
    built the provider (the caller then calls :func:`shutdown` at exit). Idempotent within a
    process."""
    global tracer, _provider, _pid
    if _provider is not None and _pid == os.getpid():
        return False
    if _provider is not None:  # inherited through a fork: its export thread is not here
        tracer = _provider = None
    if not requested():
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_* variables ask for tracing but opentelemetry-sdk is not installed "
            "(pip install 'nnserve[tracing]'); serving without tracing"
        )
        return False
    exporters = _exporters(os.environ)
    if not exporters:
        log.error("no usable span exporter (OTEL_TRACES_EXPORTER): serving without tracing")
        return False
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER[_ARG]
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider)
    _provider, _pid = provider, os.getpid()
    log.info(
        "tracing on: %s, service.name=%s",
        ", ".join(type(e).__name__ for e in exporters),
        resource.attributes.get("service.name"),
    )
    return True


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    names = [
        n.strip().lower()
        for n in (environ.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")
        if n.strip() and n.strip().lower() != "none"
    ]
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    exporters = []
    for name in names:
        entry = _OTLP.get(protocol, protocol) if name == "otlp" else name
        found = metadata.entry_points(group="opentelemetry_traces_exporter", name=entry)
        if not found:
            log.error("OTEL_TRACES_EXPORTER: no span exporter %r is installed; ignored", entry)
            continue
        try:
            exporters.append(next(iter(found)).load()())
        except Exception:
            log.exception("OTEL_TRACES_EXPORTER: the %r span exporter failed to start", entry)
    return exporters


def install(provider: TracerProvider) -> None:
    """Trace with ``provider`` in this process (tests hand in one with an in-memory exporter;
    :func:`setup` calls it with the one it built). Not the global OpenTelemetry provider."""
    global tracer
    try:
        version: str | None = metadata.version("nnserve")
    except metadata.PackageNotFoundError:
        version = None
    tracer = provider.get_tracer("nnserve", version)


def shutdown() -> None:
    """Export what waits (bounded by the processor's timeout) and turn tracing off."""
    global tracer, _provider
    provider = _provider if _pid == os.getpid() else None
    tracer = _provider = None
    if provider is not None:
        provider.shutdown()


def uninstall() -> None:
    """Turn tracing off without shutting the provider down (it belongs to the caller)."""
    global tracer
    tracer = None


# -- spans below the HTTP edge (called only while ``tracer`` is set) ---------------------------
def current_span() -> Span | None:
    """The request's span (set by the edge as the current one), if there is a valid one."""
    span = get_current_span()
    return span if span.get_span_context().is_valid else None


def trace_id(span: Span) -> str:
    """32 lower-case hex digits, as in ``traceparent`` and in log lines."""
    return format(span.get_span_context().trace_id, "032x")


def queue_wait(request: Span, start_ns: int, end_ns: int) -> None:
    """A request's wait in the queue, from admission to its batch's start (its model and
    version are on the request's span)."""
    assert tracer is not None
    span = tracer.start_span(
        "queue wait", context=set_span_in_context(request), start_time=start_ns
    )
    span.end(end_time=end_ns)


def batch_run(requests: Sequence[Span], attributes: Mapping[str, Any]) -> Span:
    """One onnxruntime run (started now; the caller ends it): a child of the first recording
    (sampled) request of the batch, linked to every request in it."""
    assert tracer is not None
    parent = next((r for r in requests if r.is_recording()), requests[0])
    return tracer.start_span(
        "batch run",
        context=set_span_in_context(parent),
        links=[Link(r.get_span_context()) for r in requests],
        attributes=attributes,
    )


def failed(span: Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def child(parent: Span, name: str, attributes: Mapping[str, Any]) -> Span:
    """A span under ``parent``, started now (the caller ends it)."""
    assert tracer is not None
    return tracer.start_span(name, context=set_span_in_context(parent), attributes=attributes)


class RunTrace(NamedTuple):
    """What the batcher's run hook gets about a run while tracing is on: its ``batch run``
    span (None when no request of the batch is sampled) and the trace id of each row's
    request (None for a request without a span)."""

    span: Span | None
    trace_ids: list[str | None]
