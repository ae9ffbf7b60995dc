"""Tracing's set-up from the standard OTEL_* variables: off by default, on per worker process,
the SDK's own sampler and resource handling, and a service that runs without the SDK."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from service.observability import tracing
from service.runtime.batcher import BatchConfig, Batcher
from tests.unit.service.test_batcher import fake_model

OTEL = (
    "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
)  # fmt: skip


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in OTEL:
        monkeypatch.delenv(name, raising=False)
    yield
    tracing.shutdown()
    assert tracing.tracer is None


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_tracing_is_on_only_when_otel_variables_ask_for_it(
    environ: dict[str, str], on: bool
) -> None:
    assert tracing.requested(environ) is on


def test_off_by_default_sets_nothing_up() -> None:
    assert tracing.setup() is False and tracing.tracer is None


def test_setup_builds_one_provider_per_process_with_the_sdk_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # otlp = http
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    with caplog.at_level(logging.INFO, "nnserve.tracing"):
        assert tracing.setup() is True
    assert tracing.tracer is not None and tracing._provider is not None
    assert "tracing on: OTLPSpanExporter, service.name=nnserve" in caplog.text
    assert tracing._provider.resource.attributes["service.name"] == "nnserve"
    assert "0.25" in tracing._provider.sampler.get_description()  # the SDK read the sampler
    assert tracing.setup() is False  # already on in this process: nothing built again
    tracing.shutdown()
    assert tracing.tracer is None


def test_the_service_name_and_exporters_come_from_the_standard_variables(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,no-such-exporter")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "scoring")
    with caplog.at_level(logging.INFO, "nnserve.tracing"):
        assert tracing.setup() is True
    assert tracing._provider is not None
    assert tracing._provider.resource.attributes["service.name"] == "scoring"
    assert "no span exporter 'no-such-exporter'" in caplog.text
    assert "tracing on: ConsoleSpanExporter" in caplog.text
    tracing.shutdown()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "no-such-exporter")  # nothing usable: off
    assert tracing.setup() is False and tracing.tracer is None


def test_a_forked_worker_builds_its_own_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    assert tracing.setup() is True
    inherited = tracing._provider
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the provider it inherited is not its own
        try:
            fresh = tracing.setup() and tracing._provider is not inherited
            os.write(write, b"1" if fresh and tracing.tracer is not None else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    os.waitpid(pid, 0)
    assert tracing._provider is inherited  # the parent keeps its own


def test_without_the_sdk_the_service_runs_untraced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails
    assert tracing.setup() is False and tracing.tracer is None
    assert "pip install 'nnserve[tracing]'" in caplog.text


def test_a_failed_batch_run_is_an_error_span_linked_to_every_request() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    assert tracing.tracer is not None
    model = fake_model(seconds_per_sample=0.01, slow_down=0.0)  # a run in a worker thread

    def broken(batch: np.ndarray) -> list[np.ndarray]:
        raise RuntimeError("onnxruntime failed")

    model.run = broken
    requests = [tracing.tracer.start_span(f"request {i}") for i in range(3)]

    async def scenario() -> list[object]:
        with ThreadPoolExecutor(1) as executor:
            config = BatchConfig(max_batch_size=8, max_batch_delay_s=0.05)
            batcher = Batcher(model, config, executor)  # type: ignore[arg-type]
            deadline = time.perf_counter() + 10
            return await asyncio.gather(
                *(batcher.submit(np.ones((1, 3), np.float32), deadline, (), r) for r in requests),
                return_exceptions=True,
            )

    try:
        assert all(isinstance(r, RuntimeError) for r in asyncio.run(scenario()))
    finally:
        tracing.uninstall()
    (run,) = [s for s in exporter.get_finished_spans() if s.name == "batch run"]
    assert run.status.status_code == StatusCode.ERROR
    assert [e.name for e in run.events] == ["exception"]
    assert [link.context for link in run.links] == [r.get_span_context() for r in requests]
    assert run.parent == requests[0].get_span_context()
    assert dict(run.attributes or {})["nnserve.batch.inline"] is False
    waits = [s for s in exporter.get_finished_spans() if s.name == "queue wait"]
    assert sorted(w.parent.span_id for w in waits if w.parent) == sorted(
        r.get_span_context().span_id for r in requests
    )


def test_log_lines_carry_the_trace_id_in_both_formats() -> None:
    from service.observability.logs import JsonFormatter, TextFormatter, request_id, trace_id

    record = logging.LogRecord("nnserve.http", logging.INFO, "", 0, "POST /x -> %d", (404,), None)
    text = TextFormatter("[%(request_id)s] %(message)s")
    rid, trace = request_id.set("r1"), trace_id.set("ab" * 16)
    try:
        assert text.format(record) == f"[r1 trace={'ab' * 16}] POST /x -> 404"
        line = json.loads(JsonFormatter().format(record))  # after the text formatter: unchanged
        assert (line["request_id"], line["trace_id"]) == ("r1", "ab" * 16)
    finally:
        trace_id.reset(trace)
    assert text.format(record) == "[r1] POST /x -> 404"  # tracing off: as before
    assert "trace_id" not in json.loads(JsonFormatter().format(record))
    request_id.reset(rid)
