"""The HTTP application: FastAPI behind the edge (RequestObserver → FastPath → FastAPI)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__
from service.errors import InvalidInput, NNServeError
from service.http import inference, repository, v1, v2
from service.http.edge import RequestObserver
from service.http.fastpath import FastPath
from service.http.responses import error_response, json_response
from service.http.state import state
from service.observability.metrics import CONTENT_TYPE, Metrics
from service.protocol.schemas import V1Feedback

DESCRIPTION = """Serves the networks in the model repository with onnxruntime.

* **Open Inference Protocol (KServe v2)** under `/v2`, with the binary tensor data extension.
* **Friendly JSON** under `/v1`: `{"instances": [...]}` → `{"predictions": [...]}`.
* Prometheus metrics at `/metrics`. Errors are `{"error": "..."}` with a 4xx/5xx status.
"""
#: Request bodies the codecs decode themselves, documented by reference (see ``openapi``).
DECODED_BODIES: list[type[BaseModel]] = [
    *dict.fromkeys(route.request for route in inference.ROUTES),
    V1Feedback,
]

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]


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

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, plus the schemas of the bodies that routes decode with the
        protocol codecs rather than through FastAPI (they refer to them by name)."""
        if self.openapi_schema is None:
            schema = super().openapi()
            _, defs = models_json_schema(
                [(m, "validation") for m in DECODED_BODIES],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                defs.get("$defs", {})
            )
        return self.openapi_schema  # type: ignore[return-value]


def build(metrics: Metrics, lifespan: Lifespan) -> ServiceApp:
    app = ServiceApp(
        title="nnserve", version=__version__, description=DESCRIPTION, lifespan=lifespan
    )
    app.include_router(inference.router())
    app.include_router(v2.router)
    app.include_router(v1.router)
    app.include_router(repository.router)

    @app.get("/metrics", tags=["Operations"], summary="Prometheus metrics (text format)")
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

    app.edge = RequestObserver(FastPath(app.framework), metrics)
    return app
