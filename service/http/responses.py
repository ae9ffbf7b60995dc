"""HTTP responses: a :class:`Reply` (body, content type, headers) sent as plain ASGI by the fast
path or wrapped as a Starlette response by FastAPI routes; errors through the one table."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200

    @classmethod
    def error(cls, exc: NNServeError) -> Reply:
        return cls(error_body(exc), headers=headers_of(exc), status=status_of(exc))

    def response(self) -> Response:
        return Response(
            self.body, status_code=self.status, headers=self.headers, media_type=self.content_type
        )

    async def send(self, send: Send) -> None:
        headers = [
            (b"content-type", self.content_type.encode()),
            (b"content-length", str(len(self.body)).encode()),
        ]
        headers += [(k.lower().encode(), v.encode()) for k, v in self.headers.items()]
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
