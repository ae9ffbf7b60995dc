"""Model repository extension (management API): index, load, unload. Bearer-token only."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from modelrepo import is_valid_name
from service.errors import Forbidden, InvalidInput, Unauthorized
from service.http import json_response
from service.schemas import ErrorBody
from service.state import Services, services


def admin(request: Request) -> Services:
    """The services, for a caller holding ``NNSERVE_ADMIN_TOKEN`` (403 when none is set)."""
    s = services(request)
    token = s.settings.admin_token
    if token is None:
        raise Forbidden("the management API is off: set NNSERVE_ADMIN_TOKEN to enable it")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.encode(), token.get_secret_value().encode()
    ):
        raise Unauthorized("missing or wrong bearer token")
    return s


Admin = Annotated[Services, Depends(admin)]
router = APIRouter(
    prefix="/v2/repository",
    tags=["Model repository (management)"],
    responses={401: {"model": ErrorBody}, 403: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)


def _checked(name: str) -> str:
    # Names come from the URL; only repository names are ever turned into paths.
    if not is_valid_name(name):
        raise InvalidInput(f"invalid model name {name!r}: expected [a-z0-9][a-z0-9-]{{0,62}}")
    return name


@router.post("/index", summary="Every version in the repository and its state")
async def index(s: Admin) -> Response:
    await s.registry.sync()
    return json_response(
        [
            {"name": v.name, "version": str(v.version), "state": v.state, "reason": v.reason}
            for v in s.registry.index()
        ]
    )


@router.post("/models/{model_name}/load", summary="Load (or reload) a model per its policy")
async def load(s: Admin, model_name: str) -> Response:
    await s.registry.load(_checked(model_name))
    return json_response(
        {
            "name": model_name,
            "versions": [str(v) for v in sorted(s.registry.served.get(model_name, {}))],
        }
    )


@router.post("/models/{model_name}/unload", summary="Stop serving every version of a model")
async def unload(s: Admin, model_name: str) -> Response:
    await s.registry.unload(_checked(model_name))
    return json_response({"name": model_name, "versions": []})
