"""Model repository extension (management API): index, load, unload. Bearer-token only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from service.dataplane import DataPlane
from service.errors import Forbidden, Unauthorized
from service.http.errors import ADMIN_ERRORS
from service.http.responses import json_response
from service.http.state import state
from service.keys import is_admin


def admin(request: Request) -> DataPlane:
    """The data plane, for a caller holding ``NNSERVE_ADMIN_TOKEN`` (Forbidden when none is
    set, Unauthorized for a missing or wrong token)."""
    edge = state(request)
    token = edge.settings.admin_token
    if token is None:
        raise Forbidden("the management API is off: set NNSERVE_ADMIN_TOKEN to enable it")
    if not is_admin(token.get_secret_value(), request.headers.get("authorization", "")):
        raise Unauthorized("missing or wrong bearer token")
    return edge.plane


Admin = Annotated[DataPlane, Depends(admin)]
router = APIRouter(
    prefix="/v2/repository", tags=["Model repository (management)"], responses=ADMIN_ERRORS
)


@router.post("/index", summary="Every version in the repository and its state")
async def index(plane: Admin) -> Response:
    return json_response(
        [
            {"name": v.name, "version": str(v.version), "state": v.state, "reason": v.reason}
            for v in await plane.index()
        ]
    )


@router.post("/models/{model_name}/load", summary="Load (or reload) a model per its policy")
async def load(plane: Admin, model_name: str) -> Response:
    versions = await plane.load(model_name)
    return json_response({"name": model_name, "versions": [str(v) for v in versions]})


@router.post("/models/{model_name}/unload", summary="Stop serving every version of a model")
async def unload(plane: Admin, model_name: str) -> Response:
    await plane.unload(model_name)
    return json_response({"name": model_name, "versions": []})
