"""Friendly JSON routes (KServe v1 style)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.http import json_response
from service.schemas import ErrorBody, V1ModelList
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
