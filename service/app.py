"""The composition root: ``create_app(settings)``. Nothing happens at import time; the
lifespan builds the metrics, the prediction log, the registry and the data plane, and hands
them to the edges."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from service.dataplane import DataPlane, PredictionRecorder
from service.http.app import ServiceApp, build, document_models
from service.http.state import EdgeState
from service.journal import Journal, writer_socket
from service.observability import tracing
from service.observability.metrics import Metrics
from service.observability.quality import Quality
from service.repository.control import ModelControl
from service.repository.registry import Registry
from service.runtime.explain import ExplainQueue
from service.settings import Settings

log = logging.getLogger("nnserve.app")


def create_app(settings: Settings | None = None) -> ServiceApp:
    """The service as one ASGI app. With ``settings.run_dir`` (set by ``python -m service``
    for its workers) it is one worker of several: it attaches to the log writer the process
    manager runs, shares model control and metrics with the other workers."""
    settings = settings or Settings()
    shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR") if settings.run_dir else None
    metrics = Metrics(multiprocess=Path(shared) if shared else None)
    # OTEL_* tracing, set up here: in each worker after the fork (gunicorn's load()), never in
    # the process manager before it (a batch span processor's thread does not survive a fork)
    traced = tracing.setup()
    keys = settings.key_ring()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="infer")
        quality = Quality(settings.accuracy_window)
        metrics.collected.quality = quality
        run_dir = settings.run_dir
        journal = None
        if settings.prediction_log:
            journal = await asyncio.to_thread(
                *(Journal.attach, settings, writer_socket(run_dir)) if run_dir
                else (Journal.open, settings)
            )  # fmt: skip
            metrics.collected.log = journal.log
            metrics.collected.limits = journal.limits()
            quality.store = journal.store
        control = ModelControl(run_dir / "control" if run_dir else None)
        registry = Registry(
            settings.model_repository,
            metrics,
            settings.model_policy(),
            executor,
            threads=settings.intra_op_threads(),
            self_check=settings.self_check,
            bare_models=settings.bare_models,
            drain_timeout_s=settings.drain_timeout,
            on_load=quality.track,
            on_unload=quality.forget,
            on_run=PredictionRecorder(journal.log) if journal is not None else None,
            control=control,
        )
        await registry.sync()
        control.acknowledge()
        gc.freeze()  # what startup built lives as long as the process: keep it out of GC passes
        tasks = []
        if settings.poll_interval > 0:
            tasks.append(asyncio.create_task(registry.poll(settings.poll_interval)))
        if journal is not None:
            tasks.append(asyncio.create_task(journal.supervise()))
        tasks.append(asyncio.create_task(control.watch(registry.apply)))
        explainer = ExplainQueue(
            settings.explain_threads, settings.explain_queue, settings.explain_max_samples
        )
        plane = DataPlane(
            registry,
            journal.log if journal else None,
            journal.store if journal else None,
            settings.retention().describe() if journal else "",
            explainer,
        )
        registry.on_change = document_models(app, plane)  # OpenAPI: per served model
        grpc_edge = None
        if settings.grpc_port:  # gRPC beside HTTP, on the same data plane (off by default)
            from service.grpc.server import GrpcEdge

            grpc_edge = GrpcEdge(settings, metrics, plane, keys)
            await grpc_edge.start()
        try:
            yield {"nnserve": EdgeState(settings, metrics, plane)}
        finally:
            if grpc_edge is not None:  # HTTP has drained; gRPC's calls in flight finish too
                await grpc_edge.stop(settings.drain_timeout)
            control.forget()
            for task in tasks:
                task.cancel()
            await registry.close()
            executor.shutdown(wait=True)
            explainer.close()
            if journal is not None:  # everything accepted is written before exit
                await asyncio.to_thread(journal.close)
            if traced:  # the spans still waiting are exported
                await asyncio.to_thread(tracing.shutdown)
            log.info("stopped")

    return build(metrics, lifespan, keys, settings.api_keys_protect_metrics)
