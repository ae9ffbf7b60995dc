"""Open Inference Protocol (KServe v2) REST routes besides ``infer``: health and metadata."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service import __version__
from service.errors import ModelNotReady
from service.http.errors import ERRORS
from service.http.responses import error_response, json_response
from service.http.state import served_model, state
from service.protocol import v2
from service.protocol.schemas import V2ModelMetadata, V2Ready, V2ServerMetadata

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"], responses=ERRORS)
EXTENSIONS = ["binary_tensor_data", "model_repository"]


@router.get("", response_model=V2ServerMetadata, summary="Server metadata")
async def server_metadata() -> Response:
    return json_response({"name": "nnserve", "version": __version__, "extensions": EXTENSIONS})


@router.get("/health/live", summary="Liveness")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready", summary="Readiness: every model in the repository is served")
async def ready(request: Request) -> Response:
    plane = state(request).plane
    if plane.ready():
        return json_response({"ready": True})
    return error_response(
        ModelNotReady(f"not ready: no version of {plane.waiting() or 'any model'} is loaded")
    )


@router.get("/models/{model_name}", response_model=V2ModelMetadata, summary="Model metadata")
async def model_metadata(request: Request, model_name: str) -> Response:
    model = served_model(request, model_name)
    return json_response(v2.metadata(model, state(request).plane.versions(model_name)))


@router.get(
    "/models/{model_name}/versions/{model_version}",
    response_model=V2ModelMetadata,
    summary="Model version metadata",
)
async def version_metadata(request: Request, model_name: str, model_version: str) -> Response:
    model = served_model(request, model_name, model_version)
    return json_response(v2.metadata(model, [model.version]))


@router.get("/models/{model_name}/ready", response_model=V2Ready, summary="Model readiness")
async def model_ready(request: Request, model_name: str) -> Response:
    return json_response({"name": served_model(request, model_name).name, "ready": True})


@router.get(
    "/models/{model_name}/versions/{model_version}/ready",
    response_model=V2Ready,
    summary="Model version readiness",
)
async def version_ready(request: Request, model_name: str, model_version: str) -> Response:
    model = served_model(request, model_name, model_version)
    return json_response({"name": model.name, "ready": True})
