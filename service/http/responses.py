"""HTTP responses: a :class:`Reply` (body, content type, headers) sent as plain ASGI by the fast
path or wrapped as a Starlette response by FastAPI routes; errors through the one table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Send

from service.errors import NNServeError
from service.http.errors import error_body, headers_of, status_of

JSON = "application/json"


@dataclass
class Reply:
    body: bytes
    content_type: str = JSON
    #: Extra headers, as ASGI pairs (lower-case names): built once where they are constant.
    headers: list[tuple[bytes, bytes]] | None = None
    status: int = 200

    @classmethod
    def error(cls, exc: NNServeError) -> Reply:
        headers = [(k.lower().encode(), v.encode()) for k, v in headers_of(exc).items()]
        return cls(error_body(exc), headers=headers, status=status_of(exc))

    def response(self) -> Response:
        headers = {k.decode(): v.decode() for k, v in self.headers or ()}
        return Response(
            self.body, status_code=self.status, headers=headers, media_type=self.content_type
        )

    async def send(self, send: Send) -> None:
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
        ]
        if self.headers:
            headers += self.headers
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        headers=headers,
        media_type=JSON,
    )


def error_response(exc: NNServeError) -> Response:
    return Reply.error(exc).response()
