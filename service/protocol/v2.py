"""Open Inference Protocol (KServe v2) REST codec, with the binary tensor data extension.

Decodes a request body into one validated batch and encodes the outputs, as JSON or as a
JSON header followed by raw tensor bytes; the edge carries the JSON header's length (the
``Inference-Header-Content-Length`` HTTP header) in and out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from service.errors import InvalidInput
from service.protocol.jsonbody import parse_json_body
from service.protocol.tensors import (
    FLOAT_COMPATIBLE,
    V2_DTYPES,
    check_declared_type,
    check_outputs,
    from_bytes,
    from_json,
)
from service.runtime.model import ServedModel

_NUMPY_TO_V2 = {dtype: name for name, dtype in V2_DTYPES.items()}


@dataclass
class InferRequest:
    id: str | None
    batch: np.ndarray
    outputs: list[tuple[str, bool]]  # (name, as binary)


def _flag(params: Any, key: str) -> bool:
    return isinstance(params, dict) and params.get(key) is True


def decode(body: bytes, header_length: int | None, model: ServedModel) -> InferRequest:
    """``header_length``: the JSON header's length when binary tensors follow it."""
    binary: memoryview | None = None
    head: bytes | memoryview = body
    if header_length is not None:
        n = header_length
        if not 0 < n <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes"
            )
        view = memoryview(body)
        head, binary = view[:n], view[n:]
    request = parse_json_body(head)
    if not isinstance(request, dict):
        raise InvalidInput(
            f"request body must be a JSON object with 'inputs', got {type(request).__name__}"
        )
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("request needs 'inputs': a non-empty list of tensors")
    spec = model.input
    if len(inputs) != 1:
        raise InvalidInput(
            f"model {model.name!r} takes exactly one input ({spec.name!r}), got {len(inputs)}"
        )
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise InvalidInput(
            "each entry of 'inputs' must be an object with name, shape, datatype and data"
        )
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if name != spec.name:
        raise InvalidInput(f"unknown input {name!r}; model {model.name!r} takes {spec.name!r}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(
            f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}"
        )
    if not isinstance(datatype, str) or datatype not in FLOAT_COMPATIBLE:
        raise InvalidInput(
            f"input {name!r}: datatype {datatype!r} is not accepted; "
            f"expected {spec.datatype} or another numeric type "
            f"({', '.join(sorted(FLOAT_COMPATIBLE))})"
        )
    size = (
        tensor.get("parameters", {}).get("binary_data_size")
        if isinstance(tensor.get("parameters"), dict)
        else None
    )
    if size is not None:
        if binary is None:
            raise InvalidInput(
                f"input {name!r} has binary_data_size but the request has no "
                "Inference-Header-Content-Length header"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
            raise InvalidInput(
                f"input {name!r}: binary_data_size is {size!r} but "
                f"{len(binary)} bytes follow the JSON header"
            )
        array = from_bytes(name, datatype, shape, binary)
    else:
        if binary is not None and len(binary):
            raise InvalidInput(
                f"{len(binary)} bytes follow the JSON header but no input has binary_data_size"
            )
        if "data" not in tensor:
            raise InvalidInput(f"input {name!r} needs 'data' (or binary_data_size)")
        # numpy would turn a JSON boolean mixed into numbers into 1.0 silently: look for one
        # element by element only when the JSON text has a boolean literal at all
        text = head if isinstance(head, bytes) else bytes(head)
        array = from_json(name, tensor["data"], check_bools=b"true" in text or b"false" in text)
        expected = int(np.prod(shape, dtype=np.int64))
        if array.size != expected:
            raise InvalidInput(
                f"input {name!r}: shape {shape} needs {expected} values, got {array.size}"
            )
        check_declared_type(name, datatype, array)
        array = array.reshape(shape)
    batch = model.check.conform(array, name)
    return InferRequest(
        request.get("id") if isinstance(request.get("id"), str) else None,
        batch,
        _requested_outputs(request, model),
    )


def _requested_outputs(request: dict[str, Any], model: ServedModel) -> list[tuple[str, bool]]:
    binary_default = _flag(request.get("parameters"), "binary_data_output")
    wanted = request.get("outputs")
    if wanted is None:
        return [(name, binary_default) for name in model.output_names]
    if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
        raise InvalidInput("'outputs' must be a list of objects with a 'name'")
    result = []
    for output in wanted:
        name = output.get("name")
        if name not in model.output_names:
            raise InvalidInput(
                f"unknown output {name!r}; model {model.name!r} has {model.output_names}"
            )
        params = output.get("parameters")
        binary = (
            params.get("binary_data", binary_default)
            if isinstance(params, dict)
            else (binary_default)
        )
        result.append((name, binary is True))
    return result


def encode(
    model: ServedModel, request: InferRequest, values: list[np.ndarray], request_id: str
) -> tuple[bytes, int | None]:
    """Response body and, when any output is binary, the JSON header's length."""
    check_outputs(model.name, model.output_names, values)
    by_name = dict(zip(model.output_names, values, strict=True))
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in request.outputs:
        value = by_name[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": _NUMPY_TO_V2[value.dtype],
            "shape": list(value.shape),
        }
        if binary:
            raw = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = value.ravel()
        outputs.append(entry)
    head = orjson.dumps(
        {
            "model_name": model.name,
            "model_version": str(model.version),
            "id": request.id or request_id,
            "outputs": outputs,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not blobs:
        return head, None
    return b"".join([head, *blobs]), len(head)


def metadata(model: ServedModel, versions: list[int]) -> dict[str, Any]:
    """Model metadata: the served ``versions`` of the model, and this version's tensors."""
    card = model.card
    return {
        "name": card.name,
        "versions": [str(v) for v in versions],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in card.inputs],
        "outputs": [
            {"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in card.outputs
        ],
        "parameters": {
            "kind": card.kind,
            "task": card.task,
            "labels": card.labels,
            "feature_names": card.feature_names,
        },
    }
