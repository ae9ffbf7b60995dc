"""Friendly JSON routes (KServe v1 style)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from service import feedback as feedback_calls
from service.errors import ModelNotFound, ModelNotReady
from service.fastpath import read_body
from service.http import json_response
from service.schemas import ErrorBody, V1FeedbackResponse, V1ModelList
from service.state import services
from service.v2 import parse_json_body

router = APIRouter(
    prefix="/v1",
    tags=["Friendly JSON (v1)"],
    responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)


@router.get("/models", response_model=V1ModelList, summary="Models being served")
async def list_models(request: Request) -> Response:
    return json_response({"models": sorted(services(request).registry.served)})


@router.get("/models/{model_name}", summary="A model's card: I/O, labels, metrics, provenance")
async def describe(request: Request, model_name: str) -> Response:
    s = services(request)
    model = s.resolve(request.scope["nnserve"], model_name)
    card = model.card.model_dump(exclude={"reference", "baseline"})
    return json_response(
        {
            "name": model.name,
            "ready": True,
            "version": str(model.version),
            "versions": [str(v) for v in sorted(s.registry.served[model.name])],
            "card": card,
        }
    )


@router.post(
    "/models/{model_name}/feedback",
    response_model=V1FeedbackResponse,
    summary="Ground truth for logged predictions",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/V1Feedback"}}
            },
        }
    },
)
async def feedback(request: Request, model_name: str) -> Response:
    s = services(request)
    if s.log is None or s.store is None:
        raise ModelNotReady("feedback needs the prediction log (NNSERVE_PREDICTION_LOG=true)")
    if model_name not in s.registry.found and model_name not in s.registry.served:
        raise ModelNotFound(f"unknown model {model_name!r}")
    body = await read_body(
        request.receive,
        request.headers.get("content-length", "").encode() or None,
        s.settings.max_body_bytes,
    )
    pairs = feedback_calls.parse(parse_json_body(body))
    result = await asyncio.to_thread(
        feedback_calls.record, s.log, s.store, s.registry, s.quality, model_name, pairs
    )
    return json_response(result)
