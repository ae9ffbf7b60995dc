"""Friendly JSON routes (KServe v1 style), besides ``:predict`` (``service.http.inference``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.http.errors import ERRORS, documented
from service.http.requests import read_body
from service.http.responses import json_response
from service.http.state import served_model, state
from service.protocol import v1
from service.protocol.schemas import V1FeedbackResponse, V1ModelList

router = APIRouter(prefix="/v1", tags=["Friendly JSON (v1)"], responses=ERRORS)


@router.get("/models", response_model=V1ModelList, summary="Models being served")
async def list_models(request: Request) -> Response:
    return json_response({"models": state(request).plane.models()})


@router.get("/models/{model_name}", summary="A model's card: I/O, labels, metrics, provenance")
async def describe(request: Request, model_name: str) -> Response:
    model = served_model(request, model_name)
    return json_response(v1.describe(model, state(request).plane.versions(model.name)))


@router.post(
    "/models/{model_name}/feedback",
    response_model=V1FeedbackResponse,
    responses=documented(409),
    summary="Ground truth for logged predictions (a forecaster's: actual values)",
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
    edge = state(request)
    body = await read_body(
        request.receive,
        request.headers.get("content-length", "").encode() or None,
        edge.settings.max_body_bytes,
    )
    newest = edge.plane.newest(model_name)
    if newest is not None and newest.card.forecast is not None:  # actual values, not labels
        items = v1.decode_feedback(body, newest)
        return json_response(await edge.plane.actuals(model_name, items))
    return json_response(await edge.plane.feedback(model_name, v1.decode_feedback(body)))
