"""The HTTP application: FastAPI behind the edge (RequestObserver → FastPath → FastAPI)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__
from service.console import routes as console
from service.dataplane import DataPlane
from service.errors import InvalidInput, NNServeError
from service.http import inference, repository, v1, v2
from service.http.auth import HEALTH, ApiKeyGuard
from service.http.edge import RequestObserver
from service.http.fastpath import FastPath
from service.http.openapi import Catalog, add_models, catalog
from service.http.responses import error_response, json_response
from service.http.state import state
from service.keys import KeyRing
from service.observability import tracing
from service.observability.metrics import CONTENT_TYPE, Metrics

DESCRIPTION = """Serves the networks in the model repository with onnxruntime.

* **Open Inference Protocol (KServe v2)** under `/v2`, with the binary tensor data extension.
* **Friendly JSON** under `/v1`: `{"instances": [...]}` → `{"predictions": [...]}`.
* Prometheus metrics at `/metrics`. Errors are `{"error": "..."}` with a 4xx/5xx status.
"""

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]


class ServiceApp(FastAPI):
    """FastAPI, behind the edge: RequestObserver → FastPath → FastAPI's own stack.

    The edge sits outside FastAPI's middleware so that it observes every request (errors
    included) and so that the prediction hot path skips FastAPI's layers entirely.
    """

    edge: ASGIApp | None = None
    #: The served models the OpenAPI document describes (set by ``document_models``).
    catalog: Callable[[], Catalog] | None = None

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.edge is None:
            await self.framework(scope, receive, send)
        else:
            await self.edge(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, plus the bodies the codecs decode (generic, and per served
        model on concrete paths: ``service.http.openapi``). Built on the first request after
        the served models changed (``document_models``)."""
        if self.openapi_schema is None:
            add_models(super().openapi(), *(self.catalog() if self.catalog else ({}, [])))
        return self.openapi_schema  # type: ignore[return-value]


def document_models(app: FastAPI, plane: DataPlane) -> Callable[[], None]:
    """Have ``app``'s OpenAPI document describe ``plane``'s models; returns what the registry
    calls on every load, unload and swap (the next request for the document rebuilds it)."""

    def changed() -> None:
        app.openapi_schema = None

    if isinstance(app, ServiceApp):
        app.catalog = functools.partial(catalog, plane)
    changed()
    return changed


def build(
    metrics: Metrics,
    lifespan: Lifespan,
    keys: KeyRing | None = None,
    protect_metrics: bool = False,
) -> ServiceApp:
    """``keys``: API keys guard every route but health, management (and ``/metrics`` unless
    ``protect_metrics``); None: no guard in the chain at all."""
    app = ServiceApp(
        title="nnserve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc from the package's own assets (service.console)
        redoc_url=None,
    )
    app.include_router(inference.router())
    app.include_router(v2.router)
    app.include_router(v1.router)
    app.include_router(repository.router)
    app.include_router(console.router)

    @app.get(
        "/metrics",
        tags=["Operations"],
        summary="Prometheus metrics (text format)",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus(request: Request) -> Response:
        # a thread: the collector asks the log writer for its figures (bounded wait)
        body = await asyncio.to_thread(state(request).metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

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

    inner: ASGIApp = FastPath(app.framework)
    if keys is not None:
        open_paths = HEALTH if protect_metrics else HEALTH | {"/metrics"}
        inner = ApiKeyGuard(inner, keys, metrics, open_paths)
    app.edge = RequestObserver(inner, metrics)
    if tracing.tracer is not None:  # the server spans; off, not in the chain at all
        from service.http.tracing import TracingEdge

        app.edge = TracingEdge(app.edge)
    return app
