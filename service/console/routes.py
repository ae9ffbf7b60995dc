"""The console's routes: the page and its assets, the offline OpenAPI docs (``/docs``,
``/redoc``), and the two read-only look-ups the page needs beyond the API: a version's
training plots and its committed samples (the card's reference batch).

Nothing here changes anything: the page never offers management calls (loading, unloading
and the index stay with the API and ``NNSERVE_ADMIN_TOKEN``). Files are served only from
fixed names: the page's own assets, the docs' assets from the ``fastapi-offline`` package
(Swagger UI and ReDoc, MIT), and a served version's ``learning_curve.png`` /
``confusion_matrix.png`` inside its folder of the repository, never a path a client wrote.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.responses import FileResponse, HTMLResponse, Response

from service.errors import ModelNotFound
from service.http.responses import json_response
from service.http.state import served_model

PAGE = Path(__file__).parent / "static"
#: The page's assets (``/console/static/<name>``) and the docs' (``/console/docs/<name>``).
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
DOCS = Path(fastapi_offline.__file__).parent / "static"
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
PLOTS = ("learning_curve.png", "confusion_matrix.png")
#: Everything the page loads comes from this service; images also as blob: (fetched with
#: the API key when one is needed) and data: URLs.
POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
OAUTH_REDIRECT = "/docs/oauth2-redirect"

router = APIRouter(include_in_schema=False)


def _asset(folder: Path, name: str, types: dict[str, str]) -> Response:
    kind = types.get(name)
    if kind is None:
        raise ModelNotFound(f"no such file {name!r}")
    return FileResponse(folder / name, media_type=kind, headers={"Cache-Control": "no-cache"})


@router.get("/")
async def page() -> Response:
    return FileResponse(
        PAGE / "index.html",
        media_type="text/html",
        headers={"Content-Security-Policy": POLICY, "Cache-Control": "no-cache"},
    )


@router.get("/console/static/{name}")
async def asset(name: str) -> Response:
    return _asset(PAGE, name, ASSETS)


@router.get("/console/docs/{name}")
async def docs_asset(name: str) -> Response:
    if name == "redoc.standalone.js":
        return Response(_redoc(), media_type="text/javascript")
    return _asset(DOCS, name, DOCS_ASSETS)


#: The one address ReDoc's bundle fetches by itself: its logo (beside "API docs by Redocly"),
#: shown from the package's favicon instead, so that no request leaves the machine.
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


@functools.cache
def _redoc() -> bytes:
    return (
        (DOCS / "redoc.standalone.js")
        .read_bytes()
        .replace(REDOC_LOGO, b"/console/docs/favicon.png")
    )


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="nnserve - Swagger UI",
        swagger_js_url="/console/docs/swagger-ui-bundle.js",
        swagger_css_url="/console/docs/swagger-ui.css",
        swagger_favicon_url="/console/docs/favicon.png",
        oauth2_redirect_url=OAUTH_REDIRECT,
    )


@router.get(OAUTH_REDIRECT)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
async def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title="nnserve - ReDoc",
        redoc_js_url="/console/docs/redoc.standalone.js",
        redoc_favicon_url="/console/docs/favicon.png",
        with_google_fonts=False,
    )


@router.get("/console/api/models/{model_name}/versions/{model_version}/plots/{plot}")
async def plot(request: Request, model_name: str, model_version: str, plot: str) -> Response:
    """A served version's training plot, from its own folder of the repository."""
    model = served_model(request, model_name, model_version)
    path = model.folder / plot
    if plot not in PLOTS or not path.is_file():
        raise ModelNotFound(f"{model_name} version {model_version} has no plot {plot!r}")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})


@router.get("/console/api/models/{model_name}/versions/{model_version}")
async def version(request: Request, model_name: str, model_version: str) -> Response:
    """What the page shows of a served version: its own card (``/v1/models/{m}`` describes
    the newest version's), the training plots it has, and its committed samples (the card's
    reference batch, one instance each: flat values and their shape)."""
    model = served_model(request, model_name, model_version)
    found: list[dict[str, Any]] = []
    for case in model.card.reference:
        tensor = case.inputs[0]
        size = len(tensor.data) // max(tensor.shape[0], 1)
        for i in range(tensor.shape[0]):
            found.append(
                {"shape": tensor.shape[1:], "data": tensor.data[i * size : (i + 1) * size]}
            )
    plots = [name for name in PLOTS if (model.folder / name).is_file()]
    card = model.card.model_dump(mode="json")
    return json_response({"card": card, "plots": plots, "samples": found})
