"""Explanations over Friendly JSON (KServe v1's ``:explain`` verb).

Request: a v1 predict body (``{"instances": [...]}``, the model's natural shape) and optional
``"parameters": {"patch_size": <pixels>}`` for image models. Response: each instance's
prediction (label and probabilities, or outputs) with its explanation: ``attributions`` in the
instance's shape (per feature, per pixel, per time step x channel), ``target`` (the label
explained, or ``outputs[0]`` for a regression model) and its ``score``; for sequences also
``time_steps`` and ``channels``; ``feature_names`` for tabular models. ``baseline`` says
what removed parts were replaced by, and whether the card stored it (``card``) or it was
derived from an older card (``derived``). Explanations are not written to the prediction
log, so their ids take no feedback.
"""

from __future__ import annotations

from typing import Any

from service.errors import InvalidInput
from service.protocol import v1
from service.protocol.jsonbody import parse_json_body
from service.protocol.tensors import check_outputs
from service.runtime.explain import Explained, Explanation
from service.runtime.model import ServedModel

METHOD = "occlusion"


def decode(body: bytes, model: ServedModel) -> tuple[list[v1.Group], int, int | None]:
    """Validated batches for ``model``, the number of instances, and the patch size asked."""
    groups, n = v1.decode(body, model)
    parameters = parse_json_body(body).get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"'parameters' must be an object, got {type(parameters).__name__}")
    patch = parameters.get("patch_size")
    if patch is not None and (not isinstance(patch, int) or isinstance(patch, bool)):
        raise InvalidInput(f"parameters.patch_size: expected an integer, got {patch!r}")
    return groups, n, patch


def encode(
    model: ServedModel, groups: list[v1.Group], explained: Explained, request_id: str
) -> dict[str, Any]:
    """The predictions of the unperturbed instances, each with its explanation, in order."""
    items: list[Any] = [None] * sum(len(batch) for _, batch in groups)
    for (positions, batch), found in zip(groups, explained.groups, strict=True):
        for row, e in zip(positions or range(len(batch)), found, strict=True):
            check_outputs(model.name, model.output_names, e.outputs)
            items[row] = {**_prediction(model, e), **_explanation(e, model)}
            if explained.plan.kind == "patches":
                items[row]["patch_size"] = explained.plan.groups[0][1].patch
    return {
        "model_name": model.name,
        "model_version": str(model.version),
        "id": request_id,
        "method": METHOD,
        "parts": explained.plan.kind,
        "baseline": {
            "origin": explained.baseline.origin,
            "description": explained.baseline.description,
        },
        "samples": explained.plan.samples,
        "explanations": items,
    }


def _prediction(model: ServedModel, e: Explanation) -> dict[str, Any]:
    """A classifier's label and probabilities, else the scored output's values."""
    index = model.probabilities_index if model.probabilities_index is not None else -1
    scores = e.outputs[index][0]
    labels = model.card.labels
    if not labels:
        return {"outputs": scores.tolist()}
    return {
        "label": labels[int(scores.argmax())],
        "probabilities": dict(zip(labels, scores.tolist(), strict=True)),
    }


def _explanation(e: Explanation, model: ServedModel) -> dict[str, Any]:
    labels, names = model.card.labels, model.card.feature_names
    found: dict[str, Any] = {
        "target": labels[e.target] if e.target is not None else "outputs[0]",
        "score": e.score,
        "attributions": None if e.attributions is None else e.attributions.tolist(),
    }
    if e.time_steps is not None and e.channels is not None:
        found["time_steps"] = e.time_steps.tolist()
        found["channels"] = e.channels.tolist()
    elif names and e.attributions is not None and e.attributions.shape == (len(names),):
        found["feature_names"] = names
    return found
