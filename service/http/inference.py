"""The prediction calls over HTTP, declared once in :data:`ROUTES`: most of the traffic.

Each :class:`HotRoute` is both a FastAPI route (so the OpenAPI document is generated from it,
parameters, bodies and errors included) and an entry of the lean ASGI fast path
(``service.http.fastpath``), which answers it ahead of FastAPI's routing, dependency and
middleware layers: for small models those cost more than the model. Both call :func:`serve`,
so the documented route and the fast one cannot drift apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Request
from starlette.responses import Response
from starlette.types import Receive, Scope

from service.context import RequestContext
from service.dataplane import DataPlane
from service.errors import NNServeError
from service.http.errors import ERRORS
from service.http.requests import (
    Exchange,
    Headers,
    binary_header_length,
    deadline,
    read_body,
)
from service.http.responses import Reply
from service.http.state import EdgeState
from service.observability import tracing
from service.protocol import explain, v1, v2
from service.repository.registry import ServedVersion
from service.runtime.batcher import Result

Handler = Callable[[DataPlane, RequestContext, ServedVersion, bytes, Headers], Awaitable[Reply]]


async def predict_v1(
    plane: DataPlane, ctx: RequestContext, served: ServedVersion, body: bytes, headers: Headers
) -> Reply:
    model = served.model
    groups, n = v1.decode(body, model)
    ids = ctx.prediction_ids(n)
    if len(groups) == 1:
        results = [await plane.infer(ctx, served, groups[0][1], ids)]
    else:  # sequences of several lengths: one batch per length, in parallel
        results = list(
            await asyncio.gather(
                *(
                    plane.infer(ctx, served, batch, ids if at is None else [ids[p] for p in at])
                    for at, batch in groups
                )
            )
        )
    outputs = [r.outputs for r in results]
    body = orjson.dumps(v1.encode(model, groups, outputs, ids, ctx.request_id))
    return Reply(body, headers=_logged(plane, results))


async def infer_v2(
    plane: DataPlane, ctx: RequestContext, served: ServedVersion, body: bytes, headers: Headers
) -> Reply:
    decoded = v2.decode(body, binary_header_length(headers), served.model)
    result = await plane.infer(ctx, served, decoded.batch, ctx.prediction_ids(len(decoded.batch)))
    content, header_length = v2.encode(served.model, decoded, result.outputs, ctx.request_id)
    extra = _logged(plane, (result,))
    if header_length is None:
        return Reply(content, headers=extra)
    binary = [(b"inference-header-content-length", str(header_length).encode())]
    return Reply(content, "application/octet-stream", binary + (extra or []))


async def explain_v1(
    plane: DataPlane, ctx: RequestContext, served: ServedVersion, body: bytes, headers: Headers
) -> Reply:
    model = served.model
    groups, _, patch = explain.decode(body, model)
    explained = await plane.explain(ctx, served, [batch for _, batch in groups], patch)
    return Reply(orjson.dumps(explain.encode(model, groups, explained, ctx.request_id)))


#: Response header (with the prediction log on): whether the request's predictions went to
#: the log, so that a client knows whether feedback on their ids can join.
_LOGGED = {
    state: [(b"x-prediction-log", state.encode())] for state in ("logged", "partial", "not-logged")
}


def _logged(
    plane: DataPlane, results: tuple[Result, ...] | list[Result]
) -> list[tuple[bytes, bytes]] | None:
    if plane.log is None:
        return None
    if len(results) == 1:
        return _LOGGED["logged" if results[0].recorded else "not-logged"]
    logged = sum(r.recorded for r in results)
    return _LOGGED["logged" if logged == len(results) else "partial" if logged else "not-logged"]


async def serve(
    scope: Scope, receive: Receive, handler: Handler, name: str, version: str | None
) -> Reply:
    """Lease the model version, read the body, run the handler; errors become replies."""
    edge: EdgeState = scope["state"]["nnserve"]
    headers: Headers = dict(scope["headers"])
    record: Exchange = scope["nnserve"]
    try:
        with edge.plane.lease(name, version) as served:
            record.resolved(served.model)
            ctx = RequestContext(
                record.request_id,
                deadline(headers, edge.settings.request_timeout_ms / 1000),
                tracing.current_span() if tracing.tracer is not None else None,
            )
            body = await read_body(
                receive, headers.get(b"content-length"), edge.settings.max_body_bytes
            )
            return await handler(edge.plane, ctx, served, body, headers)
    except NNServeError as exc:
        return Reply.error(exc)


# -- the route table -------------------------------------------------------------------------
def _model(model_name: Annotated[str, Path(description="a model in the repository")]) -> None:
    """Path parameters, declared for the OpenAPI document (FastAPI reads them from here)."""


def _model_version(
    model_name: Annotated[str, Path(description="a model in the repository")],
    model_version: Annotated[str, Path(description="one of its served versions")],
) -> None:
    """Path parameters of a call on one version."""


def _headers(
    x_request_id: Annotated[
        str | None, Header(alias="X-Request-Id", description="your id for this request (echoed)")
    ] = None,
    x_request_timeout_ms: Annotated[
        str | None,
        Header(
            alias="X-Request-Timeout-Ms",
            description="deadline in milliseconds (a positive number)",
            json_schema_extra={"pattern": r"^[0-9]*[1-9][0-9]*$"},  # documented, not checked
        ),
    ] = None,
) -> None:
    """Request headers every prediction call reads."""


def _binary_header(
    length: Annotated[
        str | None,
        Header(
            alias="Inference-Header-Content-Length",
            description="length of the JSON header when binary tensors follow it",
            json_schema_extra={"pattern": r"^[0-9]+$"},
        ),
    ] = None,
) -> None:
    """The binary tensor data extension's header."""


_BINARY = {
    "type": "string",
    "format": "binary",
    "description": "binary tensor data extension: the JSON header (its length in "
    "Inference-Header-Content-Length) followed by the raw tensors",
}


@dataclass(frozen=True)
class HotRoute:
    path: str  # a FastAPI path template; ``model_name`` (and ``model_version``) in it
    handler: Handler
    tag: str
    summary: str
    #: the generic bodies' component names (``service.http.openapi.GENERIC``)
    request: str
    response: str
    parameters: tuple[Callable[..., None], ...]
    binary: bool  # the binary tensor data extension

    def request_body(self) -> dict[str, Any]:
        """The OpenAPI request body (the codec, not FastAPI, decodes it: see module doc)."""
        content: dict[str, Any] = {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{self.request}"}}
        }
        if self.binary:
            content["application/octet-stream"] = {"schema": _BINARY}
        return {"requestBody": {"required": True, "content": content}}

    def responses(self) -> dict[int | str, dict[str, Any]]:
        """The OpenAPI responses: the body (JSON, or binary tensors too), and the errors."""
        content: dict[str, Any] = {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{self.response}"}}
        }
        if self.binary:  # binary_data_output / binary_data: the JSON header, then tensors
            content["application/octet-stream"] = {"schema": _BINARY}
        return {200: {"description": "Successful Response", "content": content}, **ERRORS}

    def endpoint(self) -> Callable[[Request], Awaitable[Response]]:
        """The FastAPI endpoint: the same :func:`serve` as the fast path."""
        handler = self.handler

        async def endpoint(request: Request) -> Response:
            params: Mapping[str, str] = request.path_params
            reply = await serve(
                request.scope,
                request.receive,
                handler,
                params["model_name"],
                params.get("model_version"),
            )
            return reply.response()

        return endpoint


V1_TAG, V2_TAG = "Friendly JSON (v1)", "Open Inference Protocol (v2)"
ROUTES = (
    HotRoute(
        "/v1/models/{model_name}:predict",
        predict_v1,
        V1_TAG,
        "Predict",
        "V1PredictRequest",
        "V1PredictResponse",
        (_model, _headers),
        binary=False,
    ),
    HotRoute(
        "/v1/models/{model_name}:explain",
        explain_v1,
        V1_TAG,
        "Explain: the prediction and each input part's share in it (occlusion)",
        "V1ExplainRequest",
        "V1ExplainResponse",
        (_model, _headers),
        binary=False,
    ),
    HotRoute(
        "/v1/models/{model_name}/versions/{model_version}:explain",
        explain_v1,
        V1_TAG,
        "Explain on one version",
        "V1ExplainRequest",
        "V1ExplainResponse",
        (_model_version, _headers),
        binary=False,
    ),
    HotRoute(
        "/v2/models/{model_name}/infer",
        infer_v2,
        V2_TAG,
        "Inference",
        "V2InferRequest",
        "V2InferResponse",
        (_model, _headers, _binary_header),
        binary=True,
    ),
    HotRoute(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        infer_v2,
        V2_TAG,
        "Inference on one version",
        "V2InferRequest",
        "V2InferResponse",
        (_model_version, _headers, _binary_header),
        binary=True,
    ),
)


def router() -> APIRouter:
    """The prediction routes as FastAPI routes: documented, and answering when called
    through FastAPI (the fast path answers them first in the service)."""
    api = APIRouter()
    for route in ROUTES:
        api.add_api_route(
            route.path,
            route.endpoint(),
            name=route.handler.__name__,
            methods=["POST"],
            tags=[route.tag],
            summary=route.summary,
            response_model=None,
            responses=route.responses(),
            dependencies=[Depends(p) for p in route.parameters],
            openapi_extra=route.request_body(),
        )
    return api
