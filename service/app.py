"""The app factory: ``create_app(settings)``. Nothing happens at import time; the lifespan
builds the metrics, loads the repository and hands the services to requests."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from predictionlog import PredictionLog, open_store
from service import __version__, routes_repository, routes_v1, routes_v2
from service.errors import InvalidInput, NNServeError
from service.fastpath import FastPath
from service.http import RequestObserver, error_response, json_response
from service.metrics import CONTENT_TYPE, Metrics
from service.quality import Quality
from service.registry import Registry
from service.schemas import DOCUMENTED, hot_paths
from service.settings import Settings
from service.state import Services, services

log = logging.getLogger("nnserve.app")

DESCRIPTION = """Serves the networks in the model repository with onnxruntime.

* **Open Inference Protocol (KServe v2)** under `/v2`, with the binary tensor data extension.
* **Friendly JSON** under `/v1`: `{"instances": [...]}` → `{"predictions": [...]}`.
* Prometheus metrics at `/metrics`. Errors are `{"error": "..."}` with a 4xx/5xx status.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
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
        try:
            yield {"nnserve": Services(settings, metrics, registry, quality, prediction_log, store)}
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

    app = ServiceApp(
        title="nnserve", version=__version__, description=DESCRIPTION, lifespan=lifespan
    )
    app.include_router(routes_v2.router)
    app.include_router(routes_v1.router)
    app.include_router(routes_repository.router)

    @app.get("/metrics", tags=["Operations"], summary="Prometheus metrics (text format)")
    async def prometheus(request: Request) -> Response:
        return Response(services(request).metrics.render(), media_type=CONTENT_TYPE)

    @app.exception_handler(NNServeError)
    async def domain_error(request: Request, exc: NNServeError) -> Response:
        return error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return json_response({"error": str(exc.detail)}, exc.status_code, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(InvalidInput(f"{where}: {first.get('msg', 'invalid request')}"))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _, defs = models_json_schema(
                [(m, "validation") for m in DOCUMENTED], ref_template="#/components/schemas/{model}"
            )
            schema["paths"].update(hot_paths())
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                defs.get("$defs", {})
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.edge = RequestObserver(FastPath(app.framework), metrics)
    return app


class ServiceApp(FastAPI):
    """FastAPI, behind the edge: RequestObserver → FastPath → FastAPI's own stack.

    The edge sits outside FastAPI's middleware so that it observes every request (errors
    included) and so that the prediction hot path skips FastAPI's layers entirely.
    """

    edge: ASGIApp | None = None

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.edge is None:
            await self.framework(scope, receive, send)
        else:
            await self.edge(scope, receive, send)
