"""JSON Schemas of the tensor-carrying bodies, derived from a model's card in this one place.

The codecs (``v1.py``, ``v2.py``) decode these bodies themselves, straight into numpy, so no
pydantic model describes them; these functions do, for the OpenAPI document:

* per served model version (``v1_request(model)``, ``v2_response(model)``, ...): the exact
  input name, the fixed dimensions of its shape (``minItems`` = ``maxItems``), numbers within
  float32 and within the card's value range (e.g. pixels 0-255), the feature names of a
  tabular model, the output names, datatypes and shapes, and a classifier's labels;
* generic (``model=None``): what every model has in common, for the templated paths
  (``/v2/models/{model_name}/infer``) that clients and code generators use.

What JSON Schema cannot say is left to the codec and its 400: that a v2 tensor's ``data`` has
as many values as its ``shape`` multiplies to, and that ``shape[0]`` matches in a nested
``data``. Each per-model schema carries an example built from the card's reference batch,
which the service accepts.
"""

from __future__ import annotations

from typing import Any

from modelrepo import TensorSpec
from service.protocol.tensors import FLOAT_COMPATIBLE
from service.runtime.checks import FLOAT32_MAX, describe_shape
from service.runtime.explain import kind_of
from service.runtime.model import ServedModel

Schema = dict[str, Any]


def number(spec: TensorSpec | None = None) -> Schema:
    """A value an input accepts: a finite number within float32 and the card's range."""
    low = spec.min_value if spec is not None and spec.min_value is not None else -FLOAT32_MAX
    high = spec.max_value if spec is not None and spec.max_value is not None else FLOAT32_MAX
    return {"type": "number", "minimum": low, "maximum": high}


def value(spec: TensorSpec) -> Schema:
    """A value an output has: a number (within the card's range where it declares one)."""
    schema: Schema = {"type": "number"}
    if spec.min_value is not None:
        schema["minimum"] = spec.min_value
    if spec.max_value is not None:
        schema["maximum"] = spec.max_value
    return schema


def nested(dims: list[int], leaf: Schema) -> Schema:
    """Nested arrays of ``dims`` (``-1``: any length, at least one) around ``leaf``."""
    schema = leaf
    for size in reversed(dims):
        schema = (
            {"type": "array", "items": schema, "minItems": 1}
            if size == -1
            else {"type": "array", "items": schema, "minItems": size, "maxItems": size}
        )
    return schema


def shape(dims: list[int]) -> Schema:
    """A v2 ``shape``: one integer per axis, the fixed ones exactly, the others positive."""
    return {
        "type": "array",
        "prefixItems": [
            {"type": "integer", "minimum": 1} if d == -1 else {"const": d} for d in dims
        ],
        "items": False,
        "minItems": len(dims),
        "maxItems": len(dims),
    }


def _size(dims: list[int]) -> int:
    size = 1
    for d in dims:
        size *= max(d, 1)
    return size


def _versions(versions: list[int]) -> Schema:
    return {"enum": [str(v) for v in versions]}


# -- Friendly JSON (v1) ----------------------------------------------------------------------
def v1_instance(model: ServedModel) -> Schema:
    """One instance in the model's natural shape (a tabular row may be an object too)."""
    spec = model.input
    row = nested(spec.shape[1:], number(spec))
    if not model.takes_feature_objects:
        return row
    names = model.card.feature_names
    return {
        "anyOf": [
            row,
            {
                "type": "object",
                "properties": {n: number(spec) for n in names},
                "required": names,
                "additionalProperties": False,
            },
        ]
    }


def v1_request(model: ServedModel | None = None) -> Schema:
    instance: Schema = (
        {"description": "one input in the model's natural shape"}
        if model is None
        else v1_instance(model)
    )
    return {
        "type": "object",
        "properties": {"instances": {"type": "array", "items": instance, "minItems": 1}},
        "required": ["instances"],
    }


def v1_prediction(model: ServedModel | None = None) -> Schema:
    """One prediction: a classifier's label and per-label probabilities, else the output."""
    ident = {"type": "string", "description": "the prediction's id, for feedback"}
    if model is None:
        return {
            "type": "object",
            "properties": {
                "id": ident,
                "label": {"type": "string"},
                "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
                "outputs": {"description": "the model's output for a model without labels"},
            },
            "required": ["id"],
        }
    outputs = model.card.outputs
    scores = outputs[model.probabilities_index if model.probabilities_index is not None else -1]
    labels = model.card.labels
    if labels:
        probability = value(scores)
        properties: Schema = {
            "label": {"enum": labels},
            "probabilities": {
                "type": "object",
                "properties": dict.fromkeys(labels, probability),
                "required": labels,
                "additionalProperties": False,
            },
        }
    else:
        properties = {"outputs": nested(scores.shape[1:], value(scores))}
    return {
        "type": "object",
        "properties": {"id": ident, **properties},
        "required": ["id", *properties],
        "additionalProperties": False,
    }


def v1_response(model: ServedModel | None = None, versions: list[int] | None = None) -> Schema:
    """Predictions; a forecaster's (the card has a ``forecast``): forecasts and their ids."""
    common: Schema = {
        "model_name": {"type": "string"} if model is None else {"const": model.name},
        "model_version": {"type": "string"} if not versions else _versions(versions),
        "id": {"type": "string"},
    }
    predictions: Schema = {
        "type": "object",
        "properties": {
            "predictions": {"type": "array", "items": v1_prediction(model), "minItems": 1},
            **common,
        },
        "required": ["predictions", "model_name", "model_version", "id"],
        "additionalProperties": False,
    }
    if model is None:
        return {"anyOf": [predictions, v1_forecast_response()]}
    if model.card.forecast is not None:
        return v1_forecast_response(model, common)
    return predictions


def v1_forecast_response(model: ServedModel | None = None, common: Schema | None = None) -> Schema:
    """``{"forecast": [[H values]...], "horizon", "units", "step", "ids", ...}``."""
    forecast = model.card.forecast if model is not None else None
    h = forecast.horizon if forecast is not None else None
    row: Schema = {"type": "array", "items": {"type": "number"}}
    if h is not None:
        row |= {"minItems": h, "maxItems": h}
    return {
        "type": "object",
        "properties": {
            "forecast": {"type": "array", "items": row, "minItems": 1,
                         "description": "the next values of each instance, in the series' units"},
            "horizon": {"type": "integer"} if h is None else {"const": h},
            "units": {"type": "string"} if forecast is None else {"const": forecast.units},
            "step": {"type": "string"} if forecast is None else {"const": forecast.step},
            "ids": {"type": "array", "items": {"type": "string"},
                    "description": "each forecast's id, for feedback (its actual values)"},
            **(common or {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                          "id": {"type": "string"}}),
        },
        "required": ["forecast", "horizon", "units", "step", "ids", "model_name",
                     "model_version", "id"],
        "additionalProperties": False,
    }  # fmt: skip


def v1_feedback(model: ServedModel | None = None) -> Schema:
    """``{"id", "label"}`` or a non-empty list of them; the label one of the model's. A
    forecaster's: ``{"id", "actuals", "start"?}`` (the actual values from step ``start``)."""
    if model is not None and model.card.forecast is not None:
        return _with_lists(_actuals(model.card.forecast.horizon))
    labels = model.card.labels if model is not None else []
    item = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "a prediction's id (X-Request-Id, or "
                   "predictions[i].id)"},
            "label": {"enum": labels} if labels else {"type": "string"},
        },
        "required": ["id", "label"],
        "additionalProperties": False,
    }  # fmt: skip
    if model is None:
        return {"anyOf": [*_with_lists(item)["anyOf"], *_with_lists(_actuals(None))["anyOf"]]}
    return _with_lists(item)


def _with_lists(item: Schema) -> Schema:
    return {"anyOf": [item, {"type": "array", "items": item, "minItems": 1}]}


def _actuals(horizon: int | None) -> Schema:
    values: Schema = {"type": "array", "items": {"type": "number"}, "minItems": 1}
    start: Schema = {"type": "integer", "minimum": 0}
    if horizon is not None:
        values["maxItems"] = horizon
        start["maximum"] = horizon - 1
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "a forecast's id (ids[i] of its answer)"},
            "actuals": values | {"description": "actual values, from horizon step 'start' on"},
            "start": start | {"description": "the horizon step of the first value (0: the "
                              "next value after the window); default 0"},
        },
        "required": ["id", "actuals"],
        "additionalProperties": False,
    }  # fmt: skip


# -- explanations (v1 :explain) --------------------------------------------------------------
def v1_explain_request(model: ServedModel | None = None) -> Schema:
    """A v1 predict body, and ``parameters.patch_size`` for image inputs."""
    schema = v1_request(model)
    patch: Schema = {
        "type": "integer",
        "minimum": 1,
        "description": "images: the side of an occluded square patch in pixels (default: a "
        "7 x 7 grid); coarser when the request would exceed NNSERVE_EXPLAIN_MAX_SAMPLES",
    }
    if model is not None and kind_of(model) != "patches":
        parameters: Schema = {"type": "object", "properties": {}}  # no image: no patch size
    else:
        if model is not None:
            patch["maximum"] = max(model.input.shape[-2:])
        parameters = {"type": "object", "properties": {"patch_size": patch}}
    schema["properties"]["parameters"] = parameters
    return schema


def v1_explain_response() -> Schema:
    """Predictions with their explanations (``service.protocol.explain``)."""
    numbers = {"type": "array", "items": {"type": "number"}}
    item = {
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
            "outputs": {"description": "the model's output for a model without labels"},
            "target": {"type": "string", "description": "the label explained, or outputs[0]"},
            "score": {"type": "number", "description": "the target's probability or value"},
            "attributions": {
                "type": ["array", "null"],
                "description": "the score's drop without each part, in the instance's shape "
                "(null: a sequence's cells, left out within the sample cap)",
            },
            "time_steps": {**numbers, "description": "sequences: per time step"},
            "channels": {**numbers, "description": "sequences: per channel"},
            "feature_names": {"type": "array", "items": {"type": "string"}},
            "patch_size": {"type": "integer", "minimum": 1},
        },
        "required": ["target", "score", "attributions"],
    }
    return {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "method": {"const": "occlusion"},
            "parts": {"enum": ["features", "patches", "sequence"]},
            "baseline": {
                "type": "object",
                "properties": {
                    "origin": {"enum": ["card", "derived"]},
                    "description": {"type": "string"},
                },
                "required": ["origin", "description"],
            },
            "samples": {"type": "integer", "minimum": 1},
            "explanations": {"type": "array", "items": item, "minItems": 1},
        },
        "required": [
            "model_name", "model_version", "id", "method", "parts", "baseline", "samples",
            "explanations",
        ],
    }  # fmt: skip


# -- Open Inference Protocol (v2) ------------------------------------------------------------
def v2_input(model: ServedModel | None = None) -> Schema:
    """The input tensor, with ``data`` flat or nested (JSON; binary data is the other body)."""
    datatype = {"enum": sorted(FLOAT_COMPATIBLE), "description": "any numeric datatype"}
    if model is None:
        name: Schema = {"type": "string"}
        dims: Schema = {"type": "array", "items": {"type": "integer", "minimum": 0}}
        data: Schema = {"type": "array", "description": "row-major values, flat or nested"}
    else:
        spec = model.input
        name, dims = {"const": spec.name}, shape(spec.shape)
        datatype["default"] = spec.datatype
        data = {
            "anyOf": [
                {"type": "array", "items": number(spec), "minItems": _size(spec.shape)},
                nested(spec.shape, number(spec)),
            ],
            "description": "row-major values (as many as the shape multiplies to), flat or "
            "nested in the shape",
        }
    return {
        "type": "object",
        "properties": {
            "name": name,
            "shape": dims,
            "datatype": datatype,
            "parameters": {"type": "object"},
            "data": data,
        },
        "required": ["name", "shape", "datatype", "data"],
    }


def v2_request(model: ServedModel | None = None) -> Schema:
    output_name = {"type": "string"} if model is None else {"enum": model.output_names}
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "echoed in the response"},
            "parameters": {
                "type": "object",
                "properties": {
                    "binary_data_output": {
                        "type": "boolean",
                        "description": "every output as binary (binary tensor data extension)",
                    }
                },
            },
            "inputs": {"type": "array", "items": v2_input(model), "minItems": 1, "maxItems": 1},
            "outputs": {
                "type": "array",
                "description": "the outputs wanted (default: all)",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": output_name,
                        "parameters": {
                            "type": "object",
                            "properties": {"binary_data": {"type": "boolean"}},
                        },
                    },
                    "required": ["name"],
                },
            },
        },
        "required": ["inputs"],
    }


def v2_output(spec: TensorSpec | None = None) -> Schema:
    """One output tensor of a response: ``data``, or ``parameters.binary_data_size`` when the
    tensor follows the JSON header as bytes."""
    binary = {
        "type": "object",
        "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        "required": ["binary_data_size"],
    }
    dims: Schema = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    if spec is None:
        name: Schema = {"type": "string"}
        datatype: Schema = {"type": "string"}
        data: Schema = {"type": "array", "items": {"type": "number"}}
    else:
        name, datatype = {"const": spec.name}, {"const": spec.datatype}
        # the rank exactly; the sizes in words (schemathesis 4.32 mis-validates a response
        # schema with prefixItems inside oneOf: see shape())
        dims |= {
            "minItems": len(spec.shape),
            "maxItems": len(spec.shape),
            "description": f"{describe_shape(spec.shape)} (N: the batch)",
        }
        data = {"type": "array", "items": value(spec), "minItems": _size(spec.shape)}
    return {
        "type": "object",
        "properties": {
            "name": name,
            "datatype": datatype,
            "shape": dims,
            "data": data,
            "parameters": binary,
        },
        "required": ["name", "datatype", "shape"],
        "oneOf": [{"required": ["data"]}, {"required": ["parameters"]}],
        "additionalProperties": False,
    }


def v2_response(model: ServedModel | None = None, versions: list[int] | None = None) -> Schema:
    outputs = (
        v2_output()
        if model is None
        else {"oneOf": [v2_output(spec) for spec in model.card.outputs]}
    )
    return {
        "type": "object",
        "properties": {
            "model_name": {"type": "string"} if model is None else {"const": model.name},
            "model_version": {"type": "string"} if not versions else _versions(versions),
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": outputs},
        },
        "required": ["model_name", "model_version", "id", "outputs"],
        "additionalProperties": False,
    }


def v2_metadata(model: ServedModel, versions: list[int]) -> Schema:
    """Model metadata: the exact tensors of the card, the versions served."""

    def tensors(specs: list[TensorSpec]) -> list[Schema]:
        return [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in specs]

    return {
        "type": "object",
        "properties": {
            "name": {"const": model.name},
            "versions": {"type": "array", "items": _versions(versions), "minItems": 1},
            "platform": {"const": "onnxruntime_onnx"},
            "inputs": {"const": tensors(model.card.inputs)},
            "outputs": {"const": tensors(model.card.outputs)},
            "parameters": {"type": "object"},
        },
        "required": ["name", "versions", "platform", "inputs", "outputs"],
    }


# -- examples, from the card's reference batch -----------------------------------------------
def v1_example(model: ServedModel) -> Schema | None:
    """A request the model accepts: the first sample of the card's reference batch."""
    sample = _reference_sample(model)
    if sample is None:
        return None
    dims, instance = sample
    for size in reversed(dims[1:]):  # flat → nested in the sample's shape
        instance = [instance[i : i + size] for i in range(0, len(instance), size)]
    return {"instances": [instance]}


def v2_example(model: ServedModel) -> Schema | None:
    sample = _reference_sample(model)
    if sample is None:
        return None
    dims, flat = sample
    tensor = {"name": model.input.name, "shape": [1, *dims], "datatype": "FP32", "data": flat}
    return {"inputs": [tensor]}


def _reference_sample(model: ServedModel) -> tuple[list[int], list[Any]] | None:
    """(shape of one sample, its values flat) from the card's reference batch."""
    for case in model.card.reference:
        tensor = next((t for t in case.inputs if t.name == model.input.name), None)
        if tensor is not None and tensor.shape and tensor.shape[0] >= 1:
            dims = tensor.shape[1:]
            return dims, list(tensor.data[: _size(dims)])
    return None
