"""Ground truth coming back: ``POST /v1/models/{m}/feedback`` with ``{"id", "label"}`` (or a
list of them) for predictions in the prediction log. Runs in a worker thread (store I/O)."""

from __future__ import annotations

import time
from typing import Any

from predictionlog import Feedback, FeedbackConflict, PredictionLog, Store, UnknownPrediction
from service.errors import Conflict, InvalidInput, ModelNotFound
from service.quality import Quality
from service.registry import Registry


def parse(payload: Any) -> list[tuple[str, str]]:
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise InvalidInput('feedback is empty; send {"id": ..., "label": ...} or a list')
    pairs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"id", "label"}:
            raise InvalidInput(f"feedback {i}: expected an object with exactly 'id' and 'label'")
        if not isinstance(item["id"], str) or not isinstance(item["label"], str):
            raise InvalidInput(f"feedback {i}: 'id' and 'label' must be strings")
        pairs.append((item["id"], item["label"]))
    return pairs


def record(
    log: PredictionLog,
    store: Store,
    registry: Registry,
    quality: Quality,
    model: str,
    pairs: list[tuple[str, str]],
) -> dict[str, int]:
    """Check the ids, models and labels of every item before storing any of them."""
    log.flush(timeout=10.0)  # the predictions being labelled may still be queued
    checked = []
    for number, (prediction_id, label) in enumerate(pairs):
        prediction = store.get_prediction(prediction_id)
        if prediction is None:
            raise ModelNotFound(
                f"feedback {number}: unknown prediction id {prediction_id!r} "
                "(not logged, or not sampled)"
            )
        if prediction.model != model:
            raise InvalidInput(
                f"feedback {number}: prediction {prediction_id!r} was made by "
                f"{prediction.model!r}, not {model!r}"
            )
        labels = _labels(registry, model)
        if labels and label not in labels:
            raise InvalidInput(
                f"feedback {number}: unknown label {label!r}; expected one of {labels}"
            )
        checked.append((prediction, label))
    recorded = duplicates = 0
    for prediction, label in checked:
        try:
            new = store.record_feedback(Feedback(prediction.id, label, time.time()))
        except FeedbackConflict as exc:
            raise Conflict(
                f"prediction {prediction.id!r} already has a different label: {exc}"
            ) from None
        except UnknownPrediction as exc:  # removed between the check and now
            raise ModelNotFound(f"unknown prediction id {prediction.id!r}: {exc}") from None
        if new:
            recorded += 1
            quality.feedback(prediction.model, prediction.version, prediction.label == label)
        else:
            duplicates += 1
    return {"recorded": recorded, "duplicates": duplicates}


def _labels(registry: Registry, model: str) -> list[str]:
    versions = registry.served.get(model)
    return versions[max(versions)].card.labels if versions else []
