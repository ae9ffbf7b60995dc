"""What a model input accepts, checked on whole arrays: shape against the declared one (``-1``
= any), numbers only, finite (and representable in float32), the declared value range."""

from __future__ import annotations

import numpy as np

from modelrepo import TensorSpec
from service.errors import InvalidInput


def describe_shape(shape: list[int] | tuple[int, ...]) -> str:
    return "[" + ", ".join("N" if d == -1 else str(d) for d in shape) + "]"


FLOAT32_MAX = float(np.finfo(np.float32).max)


class InputCheck:
    """One model input's checks, prepared once per loaded version: they run on every request.
    ``conform`` returns the array as a contiguous float32 batch, or raises InvalidInput."""

    def __init__(self, spec: TensorSpec) -> None:
        self.spec = spec
        self.rank = len(spec.shape)
        self.fixed = [(axis, size) for axis, size in enumerate(spec.shape) if size != -1]
        self.variable_axes = spec.shape.count(-1)
        self.instance_shape = spec.shape[1:]
        self.low, self.high = spec.min_value, spec.max_value
        self.shape_text = describe_shape(spec.shape)
        self.instance_text = describe_shape(spec.shape[1:])

    def conform(self, array: np.ndarray, label: str | None = None) -> np.ndarray:
        shape = array.shape
        ok = len(shape) == self.rank
        if ok:
            for axis, size in self.fixed:
                if shape[axis] != size:
                    ok = False
                    break
        if not ok:
            raise InvalidInput(
                f"input {label or self.spec.name!r}: expected shape "
                f"{self.shape_text}, got {list(shape)}"
            )
        if array.size == 0:
            raise InvalidInput(
                f"input {label or self.spec.name!r}: shape {list(shape)} holds no values"
            )
        kind = array.dtype.kind
        if kind == "f":
            largest = np.abs(array).max()
            if not largest <= FLOAT32_MAX:  # NaN, ±inf, or beyond float32
                raise InvalidInput(
                    f"input {label or self.spec.name!r}: values must be finite "
                    f"numbers; got {largest}"
                )
        elif kind == "b":
            raise InvalidInput(f"input {label or self.spec.name!r}: expected numbers, got booleans")
        batch = (
            array
            if array.dtype == np.float32 and array.flags.c_contiguous
            else (np.ascontiguousarray(array, dtype=np.float32))
        )
        low, high = self.low, self.high
        if low is not None or high is not None:
            smallest, largest = batch.min(), batch.max()
            if (low is not None and smallest < low) or (high is not None and largest > high):
                raise InvalidInput(
                    f"input {label or self.spec.name!r}: values must be within "
                    f"[{low}, {high}]; got min {smallest:g}, max {largest:g}"
                )
        return batch
