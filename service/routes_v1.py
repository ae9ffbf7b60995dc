"""Friendly JSON routes (KServe v1 style)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from service import v1
from service.http import json_response, read_body
from service.schemas import ErrorBody, V1ModelList, V1PredictRequest, V1PredictResponse, body_doc
from service.state import services

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
    model = s.resolve(request, model_name)
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
    "/models/{model_name}:predict",
    response_model=V1PredictResponse,
    summary="Predict",
    openapi_extra=body_doc(V1PredictRequest),
)
async def predict(request: Request, model_name: str) -> Response:
    s = services(request)
    model = s.resolve(request, model_name)
    body = await read_body(request, s.settings.max_body_bytes)
    groups, n = v1.decode(body, model)
    if len(groups) == 1:
        outputs = [await s.infer(request, model, groups[0][1])]
    else:
        outputs = list(await asyncio.gather(*(s.infer(request, model, b) for _, b in groups)))
    return json_response(
        v1.encode(model, groups, outputs, n, request.scope["nnserve"]["request_id"])
    )
