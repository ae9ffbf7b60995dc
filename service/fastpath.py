"""The prediction hot path as plain ASGI: ``POST /v1/models/{m}:predict``,
``POST /v2/models/{m}[/versions/{v}]/infer``.

These two calls are most of the traffic and, for small models, the web framework costs far
more than the model: FastAPI's routing, dependency and middleware layers cost about three
times the rest of the request (see bench/). So they are matched here, ahead of FastAPI, with
the same codecs, errors and metrics; every other route goes to FastAPI, whose OpenAPI schema
documents these two as well (``schemas.hot_paths``).
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import BodyTooLarge, InvalidInput, MethodNotAllowed, NNServeError
from service.http import error_body
from service.inference import Reply, infer_v2, predict_v1
from service.state import Services

_V1 = re.compile(r"/v1/models/([^/]+):predict")
_V2 = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


async def read_body(receive: Receive, content_length: bytes | None, limit: int) -> bytes:
    """The whole body, refusing (413) anything over ``limit`` before or while reading it."""
    if content_length is not None:
        if not content_length.isdigit():
            raise InvalidInput(f"invalid Content-Length {content_length.decode('latin-1')!r}")
        if int(content_length) > limit:
            raise BodyTooLarge(
                f"request body of {int(content_length)} bytes exceeds the limit of {limit}"
            )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("the client disconnected before sending its whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class FastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            match = (
                _V2.fullmatch(path)
                if path.startswith("/v2/models/")
                else _V1.fullmatch(path)
                if path.startswith("/v1/models/")
                else None
            )
            if match is not None:
                if scope["method"] != "POST":
                    await _send(
                        send,
                        405,
                        Reply(
                            error_body(MethodNotAllowed("Method Not Allowed: use POST")),
                            headers={"Allow": "POST"},
                        ),
                    )
                    return
                is_v2 = path[2] == "2"
                await self._serve(
                    scope, receive, send, is_v2, match[1], match[2] if is_v2 else None
                )
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _serve(
        scope: Scope, receive: Receive, send: Send, is_v2: bool, name: str, version: str | None
    ) -> None:
        s: Services = scope["state"]["nnserve"]
        labels: dict[str, Any] = scope["nnserve"]
        headers = dict(scope["headers"])

        def header(key: str) -> str | None:
            value = headers.get(key.encode())
            return None if value is None else value.decode("latin-1")

        try:
            model = s.resolve(labels, name, version)
            body = await read_body(
                receive, headers.get(b"content-length"), s.settings.max_body_bytes
            )
            handler = infer_v2 if is_v2 else predict_v1
            reply = await handler(s, labels, model, body, header)
            status = 200
        except NNServeError as exc:
            reply = Reply(error_body(exc), headers=exc.headers)
            status = exc.status
        await _send(send, status, reply)


async def _send(send: Send, status: int, reply: Reply) -> None:
    headers = [
        (b"content-type", reply.content_type.encode()),
        (b"content-length", str(len(reply.body)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})
