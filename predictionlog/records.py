"""What the log holds: one prediction, one piece of feedback, and how arrays are stored.

Arrays are stored as little-endian float32 bytes plus their shape as JSON text
(``"[28, 28]"``), never pickled: any reader (the retraining pipeline, ``sqlite3``, ``psql``,
another language) can decode them, and loading a row can never run code.

An array of at least :data:`PACK_FROM` bytes is stored as an LZ4 block of those bytes
(``lz4.block``, without the size: the shape gives it) when that takes at most
:data:`PACK_RATIO` of them, so a blob shorter than its shape's float32 size is compressed.
Fashion-MNIST images (3,136 bytes) become about 950, and a log at its bound holds three times
as many of them; the writer's CPU per image row at a 64 MB bound, compressing included: 17.1
-> 14.5 µs (fewer pages written, checkpointed and freed). Smaller arrays (tabular rows,
forecast windows, outputs) are stored as they are: LZ4 does not shrink them enough to pay.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lz4.block
import numpy as np

#: Longest prediction id accepted (the service's ids are far shorter; clients may send their own).
MAX_ID_LENGTH = 160

#: The on-disk element type: float32, little-endian, whatever the machine.
STORED_DTYPE = np.dtype("<f4")
#: Arrays of at least this many bytes are compressed when that takes at most PACK_RATIO of them.
PACK_FROM, PACK_RATIO = 1024, 0.75


class FeedbackConflict(Exception):
    """Feedback for this prediction id is already stored, with a different label."""


class UnknownPrediction(Exception):
    """No prediction with this id was ever logged (or it has not been written yet)."""


def _check_id(value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError("a prediction id must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise ValueError(f"a prediction id has at most {MAX_ID_LENGTH} characters")


@dataclass(frozen=True, eq=False)
class Prediction:
    """One logged prediction: one instance's input, the model's output for it, and provenance.

    Equality compares the arrays element by element (NaNs equal), so a prediction read back
    from a store compares equal to the one written.
    """

    id: str  #: unique prediction id (at most MAX_ID_LENGTH characters)
    time: float  #: unix seconds
    model: str
    version: int
    inputs: np.ndarray  #: ONE instance's raw input, float32, any shape
    outputs: np.ndarray  #: that instance's output vector, float32 (class probabilities)
    label: str | None  #: predicted class label (None for non-classifiers)
    #: the trace of the request that made it (32 hex digits), when the service traced it
    trace_id: str | None = None

    def __post_init__(self) -> None:
        _check_id(self.id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Prediction):
            return NotImplemented
        return (
            (self.id, self.time, self.model, self.version, self.label, self.trace_id)
            == (other.id, other.time, other.model, other.version, other.label, other.trace_id)
            and _same_array(self.inputs, other.inputs)
            and _same_array(self.outputs, other.outputs)
        )

    def __hash__(self) -> int:
        return hash(self.id)


@dataclass(frozen=True)
class Feedback:
    """The ground-truth label a client reported for a logged prediction."""

    id: str  #: the prediction id
    label: str
    time: float  #: unix seconds

    def __post_init__(self) -> None:
        _check_id(self.id)


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))


def pack(raw: bytes) -> bytes:
    """What the log stores for an array's float32 bytes (see the module docstring)."""
    if len(raw) < PACK_FROM:
        return raw
    packed: bytes = lz4.block.compress(raw, store_size=False)
    return packed if len(packed) <= PACK_RATIO * len(raw) else raw


def encode_array(array: np.ndarray) -> tuple[bytes, str]:
    """``(little-endian float32 bytes in C order, packed; shape as JSON text)``."""
    stored = np.asarray(array, dtype=STORED_DTYPE)
    return pack(stored.tobytes(order="C")), json.dumps(list(stored.shape))


def decode_array(data: bytes | memoryview, shape: str) -> np.ndarray:
    """The inverse of :func:`encode_array`: a fresh, writable, native float32 array."""
    dims = json.loads(shape)
    if not isinstance(dims, list) or not all(isinstance(d, int) and d >= 0 for d in dims):
        raise ValueError(f"not an array shape: {shape!r}")
    size = math.prod(dims) * STORED_DTYPE.itemsize
    if len(data) != size:  # an LZ4 block (only ever shorter than the raw bytes)
        try:
            data = lz4.block.decompress(data, uncompressed_size=size)
        except lz4.block.LZ4BlockError as exc:
            raise ValueError(f"a stored array is neither {shape} float32 nor LZ4 of it") from exc
    flat = np.frombuffer(data, dtype=STORED_DTYPE)
    return flat.astype(np.float32).reshape(dims)


#: The column order both stores use for the predictions table (after their own bookkeeping).
COLUMNS = "id, time, model, version, inputs, input_shape, outputs, output_shape, label, trace_id"
#: How many columns that is (a query selecting COLUMNS and more finds the rest after them).
NCOLUMNS = COLUMNS.count(",") + 1

Row = tuple[str, float, str, int, bytes, str, bytes, str, str | None, str | None]


def to_row(prediction: Prediction) -> Row:
    """The values of one predictions-table row, in :data:`COLUMNS` order."""
    inputs, input_shape = encode_array(prediction.inputs)
    outputs, output_shape = encode_array(prediction.outputs)
    return (
        prediction.id,
        float(prediction.time),
        prediction.model,
        int(prediction.version),
        inputs,
        input_shape,
        outputs,
        output_shape,
        prediction.label,
        prediction.trace_id,
    )


def from_row(row: Sequence[Any]) -> Prediction:
    """A prediction from the first columns of a query that selected :data:`COLUMNS`."""
    columns = row[:NCOLUMNS]
    id_, time, model, version, inputs, input_shape, outputs, output_shape, label, trace = columns
    return Prediction(
        id=str(id_),
        time=float(time),
        model=str(model),
        version=int(version),
        inputs=decode_array(inputs, str(input_shape)),
        outputs=decode_array(outputs, str(output_shape)),
        label=None if label is None else str(label),
        trace_id=None if trace is None else str(trace),
    )
