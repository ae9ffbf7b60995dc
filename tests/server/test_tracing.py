"""Tracing with a real service: spans over OTLP/HTTP to a local receiver from two worker
processes (each sets tracing up after the fork), an incoming traceparent continued, and the
trace id on the access log line and in the prediction log."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.support import samples
from tests.support.repo_tools import copy_models
from tests.support.server import running_server

pytestmark = pytest.mark.timeout(120)
NAMES = {"POST /v2/models/{model_name}/infer", "queue wait", "batch run", "prediction-log write"}


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on 127.0.0.1: keeps every span POSTed to /v1/traces."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.lock = threading.Lock()
        self.spans: list[tuple[dict[str, Any], Any]] = []  # (resource attributes, span)

    def add(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    assert scope_spans.scope.name == "nnserve"
                    self.spans += [(resource, span) for span in scope_spans.spans]

    def of_trace(self, trace: str) -> dict[str, Any]:
        """The spans of one trace by name, once all of :data:`NAMES` are there (else {})."""
        with self.lock:
            found = {s.name: s for _, s in self.spans if s.trace_id.hex() == trace}
        return found if set(found) >= NAMES else {}


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            self.server.add(body)
            status, reply = 200, ExportTraceServiceResponse().SerializeToString()
        else:
            status, reply = 404, b""
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def eventually(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def tracing_lines(logs: str) -> list[str]:
    """What the service's processes logged as they set tracing up (whole lines only: the
    service may be writing the last one)."""
    lines = [json.loads(line) for line in logs.split("\n")[:-1] if line.startswith("{")]
    return sorted(line["msg"] for line in lines if line["logger"] == "nnserve.tracing")


def test_spans_go_to_an_otlp_http_receiver_and_trace_ids_to_the_logs(tmp_path: Path) -> None:
    repository = copy_models(tmp_path, "breast-cancer-ann")
    rows = samples.rows(1)
    body = {
        "inputs": [
            {"name": "features", "shape": [1, 30], "datatype": "FP32", "data": rows[0].tolist()}
        ]
    }
    traces = [f"{0xFEED0000 + i:032x}" for i in range(6)]
    with (
        receiver() as otlp,
        running_server(
            repository,
            tmp_path,
            NNSERVE_WORKERS="2",
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url,  # OTLP over HTTP: the tracing extra's
            OTEL_BSP_SCHEDULE_DELAY="50",  # ms between exports (the default is 5 s)
        ) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        for i, trace in enumerate(traces):
            response = http.post(
                "/v2/models/breast-cancer-ann/infer",
                json=body,
                headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01", "x-request-id": f"o{i}"},
            )
            assert response.status_code == 200
            assert response.headers["traceresponse"].split("-")[1] == trace
        missing = http.post("/v2/models/nope/infer", json=body)
        assert missing.status_code == 404
        own = missing.headers["traceresponse"].split("-")[1]  # a trace of its own

        for trace in traces:
            spans = eventually(lambda t=trace: otlp.of_trace(t))
            assert spans, (trace, sorted(s.name for _, s in otlp.spans))
            server_span = spans["POST /v2/models/{model_name}/infer"]
            assert server_span.parent_span_id.hex() == "00f067aa0ba902b7"
            for child in ("queue wait", "batch run"):
                assert spans[child].parent_span_id == server_span.span_id
            assert spans["prediction-log write"].parent_span_id == spans["batch run"].span_id
            attributes = {a.key: a.value for a in server_span.attributes}
            assert attributes["nnserve.model"].string_value == "breast-cancer-ann"
            assert attributes["http.response.status_code"].int_value == 200
        assert {r["service.name"] for r, _ in otlp.spans} == {"nnserve"}

        # the prediction log's rows carry their request's trace id
        db = tmp_path / f"data-{server.port}" / "predictions.db"

        def stored() -> dict[str, str]:
            with closing(sqlite3.connect(db)) as conn:
                return dict(conn.execute("SELECT id, trace_id FROM predictions"))

        assert eventually(lambda: len(stored()) == len(traces))
        assert stored() == {f"o{i}": trace for i, trace in enumerate(traces)}
        # the second worker may still be starting (the service is up once one answers)
        eventually(lambda: len(tracing_lines(server.logs())) >= 2, timeout=60)

    # the access line of the 404 names its trace (the service has stopped: its log is whole)
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    # each worker set tracing up for itself, after the fork; the process manager never did
    assert (
        tracing_lines(server.logs()) == ["tracing on: OTLPSpanExporter, service.name=nnserve"] * 2
    )
    (access,) = [line for line in lines if line.get("status") == 404]
    assert access["trace_id"] == own and "/v2/models/nope/infer" in access["msg"]
