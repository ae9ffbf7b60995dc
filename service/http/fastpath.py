"""The prediction hot path as plain ASGI, compiled from the same route table as FastAPI's
routes (:data:`service.http.inference.ROUTES`); anything else goes on to FastAPI."""

from __future__ import annotations

import re

from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.errors import MethodNotAllowed
from service.http.inference import ROUTES, Handler, serve
from service.http.responses import Reply
from service.observability import tracing

_NOT_POST = Reply.error(MethodNotAllowed("Method Not Allowed: use POST"))


class FastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        #: (path prefix, compiled path, handler, has a version, template): the prefix skips
        #: the regex for most paths
        self.routes: list[tuple[str, re.Pattern[str], Handler, bool, str]] = [
            (
                route.path.split("{", 1)[0],
                compile_path(route.path)[0],
                route.handler,
                "{model_version}" in route.path,
                route.path,
            )
            for route in ROUTES
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            for prefix, pattern, handler, versioned, template in self.routes:
                if not path.startswith(prefix):
                    continue
                match = pattern.match(path)
                if match is None:
                    continue
                if tracing.tracer is not None:  # the server span's name (service.http.tracing)
                    scope["nnserve.route"] = template
                if scope["method"] != "POST":
                    await _NOT_POST.send(send)
                    return
                reply = await serve(
                    scope,
                    receive,
                    handler,
                    match["model_name"],
                    match["model_version"] if versioned else None,
                )
                await reply.send(send)
                return
        await self.app(scope, receive, send)
