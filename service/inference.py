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
    ids = prediction_ids(labels["request_id"], n)
    for (positions, batch), values in zip(groups, outputs, strict=True):
        s.log_predictions(
            model, batch, values, ids if positions is None else [ids[p] for p in positions]
        )
    return Reply(orjson.dumps(v1.encode(model, groups, outputs, ids, labels["request_id"])))


def prediction_ids(request_id: str, n: int) -> list[str]:
    """The request id for a lone prediction, ``<request id>-<index>`` for each of several."""
    return [request_id] if n == 1 else [f"{request_id}-{i}" for i in range(n)]


async def infer_v2(
    s: Services, labels: dict[str, Any], model: ServedModel, body: bytes, header: HeaderGetter
) -> Reply:
    decoded = v2.decode(body, header(v2.HEADER_LENGTH), model)
    outputs = await s.infer(model, decoded.batch, header(TIMEOUT_HEADER))
    s.log_predictions(
        model, decoded.batch, outputs, prediction_ids(labels["request_id"], len(decoded.batch))
    )
    content, header_length = v2.encode(model, decoded, outputs, labels["request_id"])
    if header_length is None:
        return Reply(content)
    return Reply(
        content, "application/octet-stream", {"Inference-Header-Content-Length": str(header_length)}
    )
