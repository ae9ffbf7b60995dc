"""Friendly JSON (KServe v1 style): ``{"instances": [...]}`` → ``{"predictions": [...]}``.

Instances come in the model's natural shape: a row of numbers or an object keyed by feature
name (tabular), a 28x28 array (images), a list of time steps of any length (sequences).
Sequences of different lengths are split into groups of one length, so no padding ever
reaches a model. Feedback bodies (``{"id", "label"}`` or a list of them; a forecaster's
actual values) are decoded here too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.protocol import forecast
from service.protocol.jsonbody import parse_json_body
from service.protocol.tensors import check_outputs, from_json
from service.runtime.model import ServedModel

Group = tuple[list[int] | None, np.ndarray]  # (instance positions or None for all, batch)


def decode(body: bytes, model: ServedModel) -> tuple[list[Group], int]:
    """Validated batches for ``model`` and the number of instances."""
    request = parse_json_body(body)
    if not isinstance(request, dict):
        raise InvalidInput(
            f"request body must be a JSON object with 'instances', got {type(request).__name__}"
        )
    if "instances" not in request:
        raise InvalidInput("request needs 'instances': a list of inputs")
    instances = request["instances"]
    if not isinstance(instances, list):
        raise InvalidInput(f"'instances' must be a list, got {type(instances).__name__}")
    if not instances:
        raise InvalidInput("'instances' is empty; send at least one instance")
    check_bools = b"true" in body or b"false" in body
    check = model.check
    if model.takes_feature_objects:
        names = model.card.feature_names
        instances = [
            _row(i, inst, names) if isinstance(inst, dict) else inst
            for i, inst in enumerate(instances)
        ]
    if check.variable_axes > 1:  # variable-length axis: group instances by their length
        return _grouped(instances, model, check_bools), len(instances)
    array = from_json("instances", instances, check_bools=check_bools)
    if array.ndim != check.rank or list(array.shape[1:]) != check.instance_shape:
        raise InvalidInput(
            f"each instance must have shape {check.instance_text}; got instances of shape "
            f"{list(array.shape[1:])}"
        )
    return [(None, check.conform(array, "instances"))], len(instances)


def _row(index: int, instance: dict[str, Any], names: list[str]) -> list[Any]:
    unknown = sorted(set(instance) - set(names))
    if unknown:
        raise InvalidInput(f"instance {index}: unknown feature names {unknown}")
    missing = [n for n in names if n not in instance]
    if missing:
        raise InvalidInput(f"instance {index}: missing features {missing}")
    return [instance[n] for n in names]


def _grouped(instances: list[Any], model: ServedModel, check_bools: bool) -> list[Group]:
    check = model.check
    by_length: dict[int, list[int]] = {}
    arrays = []
    for i, instance in enumerate(instances):
        array = from_json(f"instances[{i}]", instance, check_bools=check_bools)
        if array.ndim != check.rank - 1 or list(array.shape[1:]) != check.instance_shape[1:]:
            raise InvalidInput(
                f"instance {i}: expected shape {check.instance_text} "
                f"(time steps x {check.instance_shape[-1]} channels), got {list(array.shape)}"
            )
        if array.shape[0] == 0:
            raise InvalidInput(f"instance {i}: a sequence needs at least one time step")
        by_length.setdefault(array.shape[0], []).append(i)
        arrays.append(array)
    return [
        (
            positions,
            check.conform(
                np.stack([arrays[i] for i in positions]),
                f"instances of length {arrays[positions[0]].shape[0]}",
            ),
        )
        for positions in by_length.values()
    ]


def encode(
    model: ServedModel,
    groups: list[Group],
    outputs: list[list[np.ndarray]],
    ids: list[str],
    request_id: str,
) -> dict[str, Any]:
    """Predictions in instance order, each with its id (for feedback); classifiers give the
    label and per-class probabilities, forecasters the forecast (``protocol.forecast``)."""
    labels = model.card.labels
    index = model.probabilities_index if model.probabilities_index is not None else -1
    for values in outputs:
        check_outputs(model.name, model.output_names, values)
    if model.card.forecast is not None:
        return forecast.encode(
            model.card.forecast,
            _in_order(groups, outputs, model.output_names.index(model.card.forecast.output)),
            ids,
            model.name,
            model.version,
            request_id,
        )
    predictions: list[Any] = [None] * len(ids)
    for (positions, _), values in zip(groups, outputs, strict=True):
        scores = values[index]
        rows = positions if positions is not None else range(len(scores))
        if labels:
            best = scores.argmax(axis=1)
            for row, probs, top in zip(rows, scores.tolist(), best.tolist(), strict=True):
                predictions[row] = {
                    "id": ids[row],
                    "label": labels[top],
                    "probabilities": dict(zip(labels, probs, strict=True)),
                }
        else:
            for row, value in zip(rows, scores.tolist(), strict=True):
                predictions[row] = {"id": ids[row], "outputs": value}
    return {
        "predictions": predictions,
        "model_name": model.name,
        "model_version": str(model.version),
        "id": request_id,
    }


def _in_order(groups: list[Group], outputs: list[list[np.ndarray]], index: int) -> np.ndarray:
    """Output ``index`` of every group, back in instance order."""
    if len(groups) == 1 and groups[0][0] is None:
        return outputs[0][index]
    total = sum(len(values[index]) for values in outputs)
    ordered = np.empty((total, *outputs[0][index].shape[1:]), dtype=outputs[0][index].dtype)
    for (positions, _), values in zip(groups, outputs, strict=True):
        ordered[positions if positions is not None else slice(None)] = values[index]
    return ordered


def decode_feedback(body: bytes, model: ServedModel | None = None) -> list[Any]:
    """``{"id": ..., "label": ...}`` or a list of them → (prediction id, label) pairs; for a
    forecaster ``model``, ``{"id", "actuals", "start"?}`` items → :class:`forecast.Actuals`."""
    payload = parse_json_body(body)
    items = payload if isinstance(payload, list) else [payload]
    if model is not None and model.card.forecast is not None:
        if not items:
            raise InvalidInput('feedback is empty; send {"id": ..., "actuals": [...]} or a list')
        return forecast.decode_actuals(items, model.card.forecast.horizon)
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


def describe(model: ServedModel, versions: list[int]) -> dict[str, Any]:
    """A model's card (without the reference batch and drift baseline) and served versions."""
    return {
        "name": model.name,
        "ready": True,
        "version": str(model.version),
        "versions": [str(v) for v in versions],
        "card": model.card.model_dump(exclude={"reference", "baseline"}),
    }
