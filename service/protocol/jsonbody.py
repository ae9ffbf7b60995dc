"""JSON request bodies, decoded once with orjson (both protocols and feedback use this)."""

from __future__ import annotations

from typing import Any

import orjson

from service.errors import InvalidInput


def parse_json_body(body: bytes | memoryview) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(
            f"malformed JSON: {exc} (NaN and Infinity are not JSON numbers)"
        ) from None
