"""A forecaster's friendly JSON (the card's ``forecast`` says a model is one): its v1 answer
``{"forecast": [[H values], ...], "horizon": H, "units", "step", "ids", ...}`` in the
series' units, and its feedback: actual values as they become known, in pieces,
``{"id", "actuals": [...], "start": k}`` (``start``: the horizon step, from 0, of the first
value; 0 when absent)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from modelrepo import Forecast
from service.errors import InvalidInput


class Actuals(NamedTuple):
    """Actual values of one logged forecast, from horizon step ``start`` (0-based) on."""

    id: str
    start: int
    values: tuple[float, ...]


def encode(
    forecast: Forecast,
    values: np.ndarray,
    ids: list[str],
    model: str,
    version: int,
    request_id: str,
) -> dict[str, Any]:
    """``values``: the forecast output ``[instances, horizon]`` in instance order."""
    return {
        "forecast": values.tolist(),
        "horizon": forecast.horizon,
        "units": forecast.units,
        "step": forecast.step,
        "ids": ids,
        "model_name": model,
        "model_version": str(version),
        "id": request_id,
    }


def decode_actuals(payload: list[Any], horizon: int) -> list[Actuals]:
    """Feedback items ``{"id", "actuals", "start"?}``, each checked against the horizon."""
    items = []
    for i, item in enumerate(payload):
        if not isinstance(item, dict) or not {"id", "actuals"} <= set(item) <= {
            "id",
            "actuals",
            "start",
        }:
            raise InvalidInput(
                f"feedback {i}: a forecast's feedback is an object with 'id', 'actuals' (the "
                "actual values, a list of numbers) and optionally 'start' (the horizon step "
                "of the first one, from 0)"
            )
        ident, actuals, start = item["id"], item["actuals"], item.get("start", 0)
        if not isinstance(ident, str):
            raise InvalidInput(f"feedback {i}: 'id' must be a string")
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < horizon:
            raise InvalidInput(
                f"feedback {i}: 'start' must be an integer step in [0, {horizon - 1}], "
                f"got {start!r}"
            )
        if not isinstance(actuals, list) or not actuals:
            raise InvalidInput(f"feedback {i}: 'actuals' must be a non-empty list of numbers")
        if start + len(actuals) > horizon:
            raise InvalidInput(
                f"feedback {i}: 'actuals' from step {start} has {len(actuals)} values; the "
                f"horizon is {horizon}, so at most {horizon - start}"
            )
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in actuals
        ):
            raise InvalidInput(f"feedback {i}: 'actuals' must be finite numbers")
        items.append(Actuals(ident, start, tuple(float(v) for v in actuals)))
    return items
