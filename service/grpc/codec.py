"""``ModelInferRequest`` → one validated batch, outputs → ``ModelInferResponse``.

The same checks as the REST codec (``service.protocol.v2``), from the same helpers
(``service.protocol.tensors``) and the model's own input check: the protocols differ in how
values arrive (``raw_input_contents`` bytes, or typed ``contents``), not in what a model takes.
Outputs go back as ``raw_output_contents``, the form tritonclient and KServe read fastest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.protocol.tensors import FLOAT_COMPATIBLE, V2_DTYPES, check_outputs, from_bytes
from service.runtime.model import ServedModel

#: Which ``InferTensorContents`` field carries each datatype (FP16: raw contents only).
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
}  # fmt: skip
_NUMPY_TO_V2 = {dtype: name for name, dtype in V2_DTYPES.items()}


def decode(request: Any, model: ServedModel) -> tuple[np.ndarray, list[str]]:
    """The request's batch, checked against ``model``, and the output names it asks for."""
    spec = model.input
    if len(request.inputs) != 1:
        raise InvalidInput(
            f"model {model.name!r} takes exactly one input ({spec.name!r}), "
            f"got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if name != spec.name:
        raise InvalidInput(f"unknown input {name!r}; model {model.name!r} takes {spec.name!r}")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: 'shape' must be non-negative integers, got {shape}")
    if datatype not in FLOAT_COMPATIBLE:
        raise InvalidInput(
            f"input {name!r}: datatype {datatype!r} is not accepted; expected {spec.datatype} "
            f"or another numeric type ({', '.join(sorted(FLOAT_COMPATIBLE))})"
        )
    raw = request.raw_input_contents
    if raw:
        if len(raw) != 1:
            raise InvalidInput(f"{len(raw)} raw_input_contents for 1 input")
        if tensor.HasField("contents"):
            raise InvalidInput(f"input {name!r} has both raw_input_contents and contents")
        array = from_bytes(name, datatype, shape, raw[0])
    else:
        array = _typed(name, datatype, shape, tensor)
    batch = model.check.conform(array, name)
    return batch, _requested_outputs(request, model)


def _typed(name: str, datatype: str, shape: list[int], tensor: Any) -> np.ndarray:
    field = CONTENTS.get(datatype)
    if field is None:
        raise InvalidInput(f"input {name!r}: datatype {datatype} needs raw_input_contents")
    values = getattr(tensor.contents, field)
    expected = int(np.prod(shape, dtype=np.int64))
    if len(values) != expected:
        raise InvalidInput(
            f"input {name!r}: shape {shape} needs {expected} values in contents.{field}, "
            f"got {len(values)}"
        )
    return np.array(values, dtype=V2_DTYPES[datatype]).reshape(shape)


def _requested_outputs(request: Any, model: ServedModel) -> list[str]:
    if not request.outputs:
        return model.output_names
    names = [o.name for o in request.outputs]
    for name in names:
        if name not in model.output_names:
            raise InvalidInput(
                f"unknown output {name!r}; model {model.name!r} has {model.output_names}"
            )
    return names


def encode(
    response: Any,
    model: ServedModel,
    request_id: str,
    wanted: list[str],
    values: list[np.ndarray],
) -> None:
    """Fill ``response`` (a ``ModelInferResponse``) with the ``wanted`` outputs."""
    check_outputs(model.name, model.output_names, values)
    by_name = dict(zip(model.output_names, values, strict=True))
    response.model_name = model.name
    response.model_version = str(model.version)
    response.id = request_id
    for name in wanted:
        value = by_name[name]
        out = response.outputs.add()
        out.name = name
        out.datatype = _NUMPY_TO_V2[value.dtype]
        out.shape.extend(value.shape)
        response.raw_output_contents.append(
            np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
        )
