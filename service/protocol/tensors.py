"""Request values → numeric arrays, shared by both protocols: they differ in how values
arrive (nested JSON, flat JSON with a shape, raw bytes), not in what a model accepts (that is
``service.runtime.checks``). Checks run on whole arrays, never element by element in Python.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.errors import InvalidInput

#: Open Inference Protocol datatype → numpy dtype (BYTES is not numeric: refused).
V2_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(t) for name, t in {
        "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
        "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
        "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    }.items()
}  # fmt: skip
#: What a float model input accepts: every numeric datatype; BOOL and BYTES are refused.
FLOAT_COMPATIBLE = frozenset(V2_DTYPES) - {"BOOL"}


def contains_bool(value: Any) -> bool:
    """Any JSON boolean inside nested lists (only called when the body has one at all)."""
    if isinstance(value, bool):
        return True
    if isinstance(value, list):
        return any(contains_bool(v) for v in value)
    return False


def from_json(name: str, values: Any, *, check_bools: bool) -> np.ndarray:
    """Nested (or flat) JSON numbers → a numeric array; strings, booleans, ragged → 400."""
    if not isinstance(values, list):
        raise InvalidInput(
            f"input {name!r}: expected an array of numbers, got {type(values).__name__}"
        )
    if check_bools and contains_bool(values):
        raise InvalidInput(f"input {name!r}: expected numbers, got a boolean")
    try:
        array = np.array(values)
    except ValueError as exc:  # ragged nesting
        raise InvalidInput(
            f"input {name!r}: nested arrays have inconsistent lengths ({exc})"
        ) from None
    if array.dtype.kind not in "iuf":
        got = {
            "U": "strings",
            "S": "strings",
            "O": "mixed or non-numeric values",
            "b": "booleans",
        }.get(array.dtype.kind, str(array.dtype))
        raise InvalidInput(f"input {name!r}: expected numbers, got {got}")
    return array


def check_declared_type(name: str, datatype: str, array: np.ndarray) -> None:
    """JSON values must be representable in the datatype the request declares."""
    dtype = V2_DTYPES[datatype]
    if dtype.kind not in "iu" or array.dtype.kind not in "iuf":
        return
    if array.dtype.kind == "f" and not np.array_equal(array, np.trunc(array)):
        raise InvalidInput(f"input {name!r}: datatype {datatype} but the data has fractions")
    info = np.iinfo(dtype)
    if array.min() < info.min or array.max() > info.max:
        raise InvalidInput(
            f"input {name!r}: values outside the range of {datatype} [{info.min}, {info.max}]"
        )


def from_bytes(name: str, datatype: str, shape: list[int], raw: bytes | memoryview) -> np.ndarray:
    """Binary tensor data extension: little-endian row-major bytes of ``datatype``."""
    dtype = V2_DTYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"input {name!r}: datatype {datatype!r} has no binary form here")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"input {name!r}: shape {shape} of {datatype} needs {expected} bytes, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def check_outputs(model: str, names: list[str], values: list[np.ndarray]) -> None:
    """A request's outputs must be finite: NaN and ±inf are no JSON numbers (they would go
    out as null) nor predictions. Inputs far beyond what a model saw in training (finite,
    but near the float32 limit where the card declares no range) overflow inside it."""
    for name, value in zip(names, values, strict=True):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise InvalidInput(
                f"model {model!r}: output {name!r} is not finite (NaN or infinity) for these "
                "inputs; values this large overflow the model"
            )
