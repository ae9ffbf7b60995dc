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

from predictionlog import PredictionLog, open_store
from service.dataplane import DataPlane
from service.http.app import ServiceApp, build
from service.http.state import EdgeState
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
        quality = Quality(settings.accuracy_window, settings.drift_window)
        metrics.collected.quality = quality
        store, prediction_log = None, None
        if settings.prediction_log:
            store = await asyncio.to_thread(open_store, settings.prediction_log_store())
            prediction_log = PredictionLog(
                store,
                max_queue=settings.prediction_log_queue,
                sample=settings.prediction_log_sample,
                on_written=quality.observed,
            )
            metrics.collected.log = prediction_log
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
        )
        await registry.sync()
        gc.freeze()  # what startup built lives as long as the process: keep it out of GC passes
        poller = (
            asyncio.create_task(registry.poll(settings.poll_interval))
            if settings.poll_interval > 0
            else None
        )
        plane = DataPlane(registry, quality, prediction_log, store)
        try:
            yield {"nnserve": EdgeState(settings, metrics, plane)}
        finally:
            if poller is not None:
                poller.cancel()
            await registry.close()
            executor.shutdown(wait=True)
            if prediction_log is not None:  # everything accepted is written before exit
                await asyncio.to_thread(prediction_log.close)
                log.info(
                    "prediction log closed: %d written, %d dropped",
                    prediction_log.written,
                    prediction_log.dropped,
                )
            log.info("stopped")

    return build(metrics, lifespan)
