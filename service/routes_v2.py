"""Open Inference Protocol (KServe v2) REST routes: thin, HTTP ⇄ codec ⇄ engine."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service import __version__
from service.errors import ModelNotReady
from service.http import error_response, json_response
from service.model import ServedModel
from service.schemas import (
    ErrorBody,
    V2ModelMetadata,
    V2Ready,
    V2ServerMetadata,
)
from service.state import services

router = APIRouter(
    prefix="/v2",
    tags=["Open Inference Protocol (v2)"],
    responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
EXTENSIONS = ["binary_tensor_data", "model_repository"]


@router.get("", response_model=V2ServerMetadata, summary="Server metadata")
async def server_metadata() -> Response:
    return json_response({"name": "nnserve", "version": __version__, "extensions": EXTENSIONS})


@router.get("/health/live", summary="Liveness")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready", summary="Readiness: every model in the repository is served")
async def ready(request: Request) -> Response:
    registry = services(request).registry
    if registry.ready():
        return json_response({"ready": True})
    waiting = sorted(n for n in registry.expected if not registry.served.get(n))
    return error_response(
        ModelNotReady(f"not ready: no version of {waiting or 'any model'} is loaded")
    )


def _metadata(model: ServedModel) -> dict[str, object]:
    card = model.card
    registry_versions = [str(v) for v in sorted({card.version})]
    return {
        "name": card.name,
        "versions": registry_versions,
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in card.inputs],
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in card.outputs
        ],
        "parameters": {
            "kind": card.kind,
            "task": card.task,
            "labels": card.labels,
            "feature_names": card.feature_names,
        },
    }


@router.get("/models/{model_name}", response_model=V2ModelMetadata, summary="Model metadata")
async def model_metadata(request: Request, model_name: str) -> Response:
    s = services(request)
    model = s.resolve(request.scope["nnserve"], model_name)
    body = _metadata(model)
    body["versions"] = [str(v) for v in sorted(s.registry.served.get(model_name, {}))]
    return json_response(body)


@router.get(
    "/models/{model_name}/versions/{model_version}",
    response_model=V2ModelMetadata,
    summary="Model version metadata",
)
async def version_metadata(request: Request, model_name: str, model_version: str) -> Response:
    return json_response(
        _metadata(services(request).resolve(request.scope["nnserve"], model_name, model_version))
    )


@router.get("/models/{model_name}/ready", response_model=V2Ready, summary="Model readiness")
async def model_ready(request: Request, model_name: str) -> Response:
    model = services(request).resolve(request.scope["nnserve"], model_name)
    return json_response({"name": model.name, "ready": True})


@router.get(
    "/models/{model_name}/versions/{model_version}/ready",
    response_model=V2Ready,
    summary="Model version readiness",
)
async def version_ready(request: Request, model_name: str, model_version: str) -> Response:
    model = services(request).resolve(request.scope["nnserve"], model_name, model_version)
    return json_response({"name": model.name, "ready": True})
