"""The two prediction calls, protocol codec → batcher → codec, independent of the web stack.

Both the documented FastAPI routes and the lean ASGI fast path (``fastpath.py``) call these,
so the hot path and the documented one can never drift apart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from service import v1, v2
from service.batcher import TIMEOUT_HEADER
from service.model import ServedModel
from service.state import Services

HeaderGetter = Callable[[str], str | None]


@dataclass
class Reply:
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


async def predict_v1(
    s: Services, labels: dict[str, Any], model: ServedModel, body: bytes, header: HeaderGetter
) -> Reply:
    groups, n = v1.decode(body, model)
    timeout = header(TIMEOUT_HEADER)
    if len(groups) == 1:
        outputs = [await s.infer(model, groups[0][1], timeout)]
    else:
        outputs = list(await asyncio.gather(*(s.infer(model, b, timeout) for _, b in groups)))
    return Reply(orjson.dumps(v1.encode(model, groups, outputs, n, labels["request_id"])))


async def infer_v2(
    s: Services, labels: dict[str, Any], model: ServedModel, body: bytes, header: HeaderGetter
) -> Reply:
    decoded = v2.decode(body, header(v2.HEADER_LENGTH), model)
    outputs = await s.infer(model, decoded.batch, header(TIMEOUT_HEADER))
    content, header_length = v2.encode(model, decoded, outputs, labels["request_id"])
    if header_length is None:
        return Reply(content)
    return Reply(
        content, "application/octet-stream", {"Inference-Header-Content-Length": str(header_length)}
    )
