"""The composition root: ``create_app(settings)``. Nothing happens at import time; the
lifespan builds the metrics, the prediction log, the registry and the data plane, and hands
them to the edges."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from service.dataplane import DataPlane, PredictionRecorder
from service.http.app import ServiceApp, build
from service.http.state import EdgeState
from service.journal import Journal
from service.observability.metrics import Metrics
from service.observability.quality import Quality
from service.repository.registry import Registry
from service.settings import Settings

log = logging.getLogger("nnserve.app")


def create_app(settings: Settings | None = None) -> ServiceApp:
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="infer")
        quality = Quality(settings.accuracy_window)
        metrics.collected.quality = quality
        journal = (
            await asyncio.to_thread(Journal.open, settings) if settings.prediction_log else None
        )
        if journal is not None:
            metrics.collected.log = journal.log
            metrics.collected.limits = journal.limits()
        registry = Registry(
            settings.model_repository,
            metrics,
            settings.model_policy(),
            executor,
            threads=settings.session_threads,
            self_check=settings.self_check,
            drain_timeout_s=settings.drain_timeout,
            on_load=quality.track,
            on_unload=quality.forget,
            on_run=PredictionRecorder(journal.log) if journal is not None else None,
        )
        await registry.sync()
        gc.freeze()  # what startup built lives as long as the process: keep it out of GC passes
        tasks = []
        if settings.poll_interval > 0:
            tasks.append(asyncio.create_task(registry.poll(settings.poll_interval)))
        if journal is not None:
            tasks.append(asyncio.create_task(journal.supervise()))
        plane = DataPlane(
            registry,
            quality,
            journal.log if journal else None,
            journal.store if journal else None,
            settings.retention().describe() if journal else "",
        )
        try:
            yield {"nnserve": EdgeState(settings, metrics, plane)}
        finally:
            for task in tasks:
                task.cancel()
            await registry.close()
            executor.shutdown(wait=True)
            if journal is not None:  # everything accepted is written before exit
                await asyncio.to_thread(journal.close)
            log.info("stopped")

    return build(metrics, lifespan)
