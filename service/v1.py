"""Friendly JSON (KServe v1 style): ``{"instances": [...]}`` → ``{"predictions": [...]}``.

Instances come in the model's natural shape: a row of numbers or an object keyed by feature
name (tabular), a 28x28 array (images), a list of time steps of any length (sequences).
Sequences of different lengths are split into groups of one length, so no padding ever
reaches a model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.model import ServedModel
from service.tensors import conform, describe_shape, from_json
from service.v2 import parse_json_body

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
    spec = model.input
    if model.card.feature_names and spec.shape[1:] == [len(model.card.feature_names)]:
        instances = [
            _row(i, inst, model.card.feature_names) if isinstance(inst, dict) else inst
            for i, inst in enumerate(instances)
        ]
    if spec.shape.count(-1) > 1:  # variable-length axis: group instances by their length
        return _grouped(instances, model, check_bools), len(instances)
    array = from_json("instances", instances, check_bools=check_bools)
    want = describe_shape(spec.shape[1:])
    if array.ndim != len(spec.shape) or list(array.shape[1:]) != spec.shape[1:]:
        raise InvalidInput(
            f"each instance must have shape {want}; got instances of shape {list(array.shape[1:])}"
        )
    return [(None, conform(spec, array, "instances"))], len(instances)


def _row(index: int, instance: dict[str, Any], names: list[str]) -> list[Any]:
    unknown = sorted(set(instance) - set(names))
    if unknown:
        raise InvalidInput(f"instance {index}: unknown feature names {unknown}")
    missing = [n for n in names if n not in instance]
    if missing:
        raise InvalidInput(f"instance {index}: missing features {missing}")
    return [instance[n] for n in names]


def _grouped(instances: list[Any], model: ServedModel, check_bools: bool) -> list[Group]:
    spec = model.input
    by_length: dict[int, list[int]] = {}
    arrays = []
    for i, instance in enumerate(instances):
        array = from_json(f"instances[{i}]", instance, check_bools=check_bools)
        if array.ndim != len(spec.shape) - 1 or list(array.shape[1:]) != spec.shape[2:]:
            raise InvalidInput(
                f"instance {i}: expected shape {describe_shape(spec.shape[1:])} "
                f"(time steps x {spec.shape[2]} channels), got "
                f"{list(array.shape)}"
            )
        if array.shape[0] == 0:
            raise InvalidInput(f"instance {i}: a sequence needs at least one time step")
        by_length.setdefault(array.shape[0], []).append(i)
        arrays.append(array)
    return [
        (
            positions,
            conform(spec, np.stack([arrays[i] for i in positions]), f"instances{positions}"),
        )
        for positions in by_length.values()
    ]


def encode(
    model: ServedModel,
    groups: list[Group],
    outputs: list[list[np.ndarray]],
    n: int,
    request_id: str,
) -> dict[str, Any]:
    """Predictions in instance order: label + per-class probabilities for classifiers."""
    labels = model.card.labels
    index = model.output_names.index("probabilities") if labels else len(model.output_names) - 1
    predictions: list[Any] = [None] * n
    for (positions, _), values in zip(groups, outputs, strict=True):
        scores = values[index]
        rows = positions if positions is not None else range(len(scores))
        if labels:
            best = scores.argmax(axis=1)
            for row, probs, top in zip(rows, scores.tolist(), best.tolist(), strict=True):
                predictions[row] = {
                    "label": labels[top],
                    "probabilities": dict(zip(labels, probs, strict=True)),
                }
        else:
            for row, value in zip(rows, scores.tolist(), strict=True):
                predictions[row] = value
    return {
        "predictions": predictions,
        "model_name": model.name,
        "model_version": str(model.version),
        "id": request_id,
    }
