"""Tracing in-process, with the OpenTelemetry SDK's in-memory exporter: the span tree of a
request and its attributes, one batch run linked to every request of its batch, the trace id
on the access log line and in the prediction log; and none of it while tracing is off."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.app import create_app
from service.http.edge import RequestObserver
from service.http.state import EdgeState
from service.observability import tracing
from service.observability.logs import JsonFormatter
from service.settings import Settings
from tests.support import samples
from tests.support.repo_tools import copy_models

V2 = "/v2/models/breast-cancer-ann/infer"
ROUTE = "POST /v2/models/{model_name}/infer"
TRACE, PARENT = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE:032x}-{PARENT:016x}-01"


def body(n: int = 1) -> bytes:
    rows = samples.rows(n)
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "data": rows.ravel().tolist(),
                }
            ]
        }
    ).encode()


def settings(tmp_path: Path) -> Settings:
    return Settings(
        model_repository=copy_models(tmp_path, "breast-cancer-ann"),
        data_dir=tmp_path / "data",
        poll_interval=0,
        max_batch_delay_ms=50,  # concurrent requests wait for each other: one batch
    )


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.uninstall()
    provider.shutdown()


@pytest.fixture(scope="module")
def client(
    spans: InMemorySpanExporter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    app = create_app(settings(tmp_path_factory.mktemp("traced")))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(autouse=True)
def fresh(request: pytest.FixtureRequest) -> None:
    if "spans" in request.fixturenames:
        request.getfixturevalue("spans").clear()


def by_name(spans: InMemorySpanExporter) -> dict[str, list[ReadableSpan]]:
    found: dict[str, list[ReadableSpan]] = {}
    for span in spans.get_finished_spans():
        found.setdefault(span.name, []).append(span)
    return found


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def parent_of(span: ReadableSpan) -> tuple[int, int]:
    assert span.parent is not None
    return span.parent.trace_id, span.parent.span_id


def edge(client: TestClient) -> EdgeState:
    state: EdgeState = client.app_state["nnserve"]
    return state


def test_a_request_is_a_server_span_with_queue_wait_batch_run_and_log_write(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    response = client.post(
        V2, content=body(), headers={"traceparent": TRACEPARENT, "x-request-id": "traced-1"}
    )
    assert response.status_code == 200, response.text
    found = by_name(spans)
    assert sorted(found) == sorted([ROUTE, "queue wait", "batch run", "prediction-log write"])
    (server,), (queue,), (run,) = found[ROUTE], found["queue wait"], found["batch run"]
    (write,) = found["prediction-log write"]
    # the incoming traceparent is continued: same trace, its span is the server span's parent
    assert server.kind == SpanKind.SERVER and ids(server)[0] == TRACE
    assert server.parent is not None and server.parent.is_remote
    assert parent_of(server) == (TRACE, PARENT)
    assert parent_of(queue) == ids(server) and parent_of(run) == ids(server)
    assert parent_of(write) == ids(run)
    assert [link.context.span_id for link in run.links] == [ids(server)[1]]
    assert {ids(s)[0] for s in (queue, run, write)} == {TRACE}
    # the response names the server span (W3C traceresponse)
    assert response.headers["traceresponse"] == f"00-{TRACE:032x}-{ids(server)[1]:016x}-01"
    assert dict(server.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/v2/models/{model_name}/infer",
        "http.response.status_code": 200,
        "url.path": V2,
        "url.scheme": "http",
        "nnserve.request_id": "traced-1",
        "nnserve.model": "breast-cancer-ann",
        "nnserve.version": 1,
    }
    assert server.status.status_code == StatusCode.UNSET
    assert not queue.attributes  # the request's span says which model
    assert dict(run.attributes or {}) == {
        "nnserve.model": "breast-cancer-ann",
        "nnserve.version": 1,
        "nnserve.batch.size": 1,
        "nnserve.batch.requests": 1,
        "nnserve.batch.inline": True,
    }
    assert dict(write.attributes or {}) == {
        "nnserve.rows": 1,
        "nnserve.prediction_log.logged": True,
    }
    # in time order: the wait ends where the run starts, all of it inside the request
    assert server.start_time is not None and server.end_time is not None
    assert queue.start_time is not None and queue.end_time is not None
    assert run.start_time is not None and run.end_time is not None
    assert server.start_time - 1_000_000 <= queue.start_time <= queue.end_time <= run.start_time
    assert run.end_time <= server.end_time


def test_a_batch_run_is_linked_to_every_request_in_it_and_rows_keep_their_trace(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    traces = [0x1000 + i for i in range(5)]

    async def together() -> list[int]:
        return list(
            await asyncio.gather(*(post(client, trace, i) for i, trace in enumerate(traces)))
        )

    assert client.portal is not None
    assert client.portal.call(together) == [200] * 5
    found = by_name(spans)
    (run,) = found["batch run"]  # five requests, one onnxruntime run
    servers = {ids(s)[0]: s for s in found[ROUTE]}
    assert sorted(servers) == traces
    assert {(link.context.trace_id, link.context.span_id) for link in run.links} == {
        ids(s) for s in servers.values()
    }
    assert parent_of(run) == ids(servers[traces[0]])  # the first request of the batch
    assert run.attributes is not None and run.attributes["nnserve.batch.size"] == 5
    assert run.attributes["nnserve.batch.requests"] == 5
    waits = {parent_of(q) for q in found["queue wait"]}
    assert waits == {ids(s) for s in servers.values()}  # each request waited in its own trace
    (write,) = found["prediction-log write"]
    assert parent_of(write) == ids(run)
    # every row in the prediction log carries the trace id of the request that made it
    plane = edge(client).plane
    assert plane.log is not None and plane.store is not None
    assert plane.log.flush(timeout=10)
    for i, trace in enumerate(traces):
        row = plane.store.get_prediction(f"batch-{i}")
        assert row is not None and row.trace_id == f"{trace:032x}"


def test_a_request_sampled_out_upstream_records_no_spans_but_keeps_its_trace_id(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    unsampled = f"00-{TRACE:032x}-{PARENT:016x}-00"  # the caller did not sample it: neither do we
    response = client.post(V2, content=body(), headers={"traceparent": unsampled})
    assert response.status_code == 200
    assert spans.get_finished_spans() == ()
    assert response.headers["traceresponse"].startswith(f"00-{TRACE:032x}-")
    assert response.headers["traceresponse"].endswith("-00")
    plane = edge(client).plane
    assert plane.log is not None and plane.store is not None and plane.log.flush(timeout=10)
    row = plane.store.get_prediction(response.headers["x-request-id"])
    assert row is not None and row.trace_id == f"{TRACE:032x}"  # logs and rows still join


async def post(client: TestClient, trace: int, i: int) -> int:
    """One request straight into the ASGI app, so that several run on one loop at once."""
    content = body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        (b"traceparent", f"00-{trace:032x}-{PARENT:016x}-01".encode()),
        (b"x-request-id", f"batch-{i}".encode()),
    ]
    scope = {
        "type": "http", "method": "POST", "path": V2, "raw_path": V2.encode(), "headers": headers,
        "query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": "",
        "server": ("testserver", 80), "client": ("127.0.0.1", 1), "asgi": {"version": "3.0"},
        "state": client.app_state.copy(),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": content, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await client.app(scope, receive, send)
    return int(sent[0]["status"])


class Lines(logging.Handler):
    """Formats each record as it is emitted, in the request's context (as a stream would)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def access_lines() -> Iterator[list[dict[str, Any]]]:
    logger = logging.getLogger("nnserve.http")
    handler, level = Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # a 200's line is logged at debug level
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_the_access_log_line_carries_the_trace_id(
    client: TestClient, spans: InMemorySpanExporter, access_lines: list[dict[str, Any]]
) -> None:
    client.post(V2, content=body(), headers={"traceparent": TRACEPARENT, "x-request-id": "ok-1"})
    missing = client.post("/v2/models/no-such-model/infer", content=body())
    assert missing.status_code == 404
    first, second = access_lines
    assert (first["request_id"], first["trace_id"], first["status"]) == (
        "ok-1", f"{TRACE:032x}", 200
    )  # fmt: skip
    # without a traceparent the request starts a trace of its own, named in the reply
    (server,) = [s for s in by_name(spans)[ROUTE] if ids(s)[0] != TRACE]
    assert second["trace_id"] == f"{ids(server)[0]:032x}" and second["status"] == 404
    assert missing.headers["traceresponse"].split("-")[1] == second["trace_id"]
    assert server.parent is None and server.status.status_code == StatusCode.UNSET  # a 4xx


def test_tracing_off_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "tracer", None)  # as when no OTEL_* variable asks for it
    app = create_app(settings(tmp_path))
    assert type(app.edge) is RequestObserver  # no tracing layer in the chain at all
    with TestClient(app) as client:
        response = client.post(V2, content=body(), headers={"traceparent": TRACEPARENT})
        assert response.status_code == 200 and "traceresponse" not in response.headers
        plane = edge(client).plane
        assert plane.log is not None and plane.store is not None and plane.log.flush(timeout=10)
        row = plane.store.get_prediction(response.headers["x-request-id"])
        assert row is not None and row.trace_id is None
