"""What the log holds: one prediction, one piece of feedback, and how arrays are stored.

Arrays are stored as little-endian float32 bytes plus their shape as JSON text
(``"[28, 28]"``), never pickled: any reader (the retraining pipeline, ``sqlite3``, ``psql``,
another language) can decode them, and loading a row can never run code.

An input of at least :data:`PACK_FROM` bytes is stored as an LZ4 block (``lz4.block``,
without the size: the shape gives it) when that takes at most :data:`PACK_RATIO` of them, so
a blob shorter than its shape's float32 size is compressed. When every value of the input is
an integer from 0 to 255 (an 8-bit image's pixels, as clients send them), the block holds
those values as bytes, not their float32 bytes: the block's decompressed length (a quarter of
the float32 size) tells which, and the values come back exactly. Fashion-MNIST images (3,136
bytes) become about 830 bytes of LZ4 of float32, or 370 of 8-bit values (LZ4 3.4 -> 1.8 µs,
plus 0.5 µs for the check); the writer's CPU per image row at a 64 MB bound, compressing
included, was 17.1 µs stored as they are, 14.5 µs as LZ4 of float32 (fewer pages written,
checkpointed and freed). Smaller arrays (tabular rows, forecast windows, outputs) are stored
as they are: LZ4 does not shrink them enough to pay.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import lz4.block
import numpy as np
import orjson

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


def eight_bit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (float32, [n, ...]) as 8-bit values, and for each row whether those are exactly
    its values (each an integer from 0 to 255, not -0.0)."""
    flat = x.reshape(len(x), -1)
    with np.errstate(invalid="ignore"):  # NaN, inf: no 8-bit value, and not equal to one
        small = flat.astype(np.uint8)
    return small.reshape(x.shape), ((small == flat) & ~np.signbit(flat)).all(axis=1)


def pack_rows(x: np.ndarray) -> list[bytes]:
    """Each row of ``x`` ([n, ...]) as the log stores it: LZ4 of its values as bytes when each
    is an integer from 0 to 255 (not -0.0; uint8 ``x``: always), else :func:`pack` of its
    float32 bytes."""
    if x.dtype == np.uint8:
        return [lz4.block.compress(row.tobytes(), store_size=False) for row in x]
    flat = x.reshape(len(x), -1)
    small, exact = eight_bit(flat)
    return [
        lz4.block.compress(small[i].tobytes(), store_size=False)
        if exact[i]
        else pack(flat[i].tobytes())
        for i in range(len(flat))
    ]


def decode_array(data: bytes | memoryview, shape: str) -> np.ndarray:
    """An array as stored (its float32 bytes, or :func:`pack` of them, or LZ4 of its 8-bit
    values (:func:`pack_rows`); its shape as JSON text): a fresh, writable, native float32
    array."""
    dims = json.loads(shape)
    if not isinstance(dims, list) or not all(isinstance(d, int) and d >= 0 for d in dims):
        raise ValueError(f"not an array shape: {shape!r}")
    count = math.prod(dims)
    size = count * STORED_DTYPE.itemsize
    if len(data) != size:  # an LZ4 block (only ever shorter than the raw bytes)
        try:
            data = lz4.block.decompress(data, uncompressed_size=size)
        except lz4.block.LZ4BlockError:
            data = b""
        if count and len(data) == count:  # 8-bit values
            return np.frombuffer(data, dtype=np.uint8).astype(np.float32).reshape(dims)
        if len(data) != size:
            raise ValueError(f"a stored array is neither {shape} float32 nor LZ4 of it")
    flat = np.frombuffer(data, dtype=STORED_DTYPE)
    return flat.astype(np.float32).reshape(dims)


#: The columns of the ``predictions`` view, in the order both stores select them.
COLUMNS = "id, time, model, version, inputs, input_shape, outputs, output_shape, label, trace_id"
#: How many columns that is (a query selecting COLUMNS and more finds the rest after them).
NCOLUMNS = COLUMNS.count(",") + 1


class Stored(NamedTuple):
    """One row of the ``prediction_batches`` table: predictions of one model version with
    inputs (and outputs) of one shape, stored together (see ``sql``). ``rows`` is JSON text:
    each prediction's ``ids``, ``times``, ``labels``, ``traces`` (absent when none was
    traced) and, when the inputs are packed one by one (``at``), where each one starts in
    ``inputs`` (n + 1 offsets); otherwise each takes ``len(inputs) // n`` bytes. Outputs always
    take ``len(outputs) // n``."""

    time: float  #: the oldest prediction's time (retention by age goes by it)
    model: str
    version: int
    n: int
    rows: str
    input_shape: str
    inputs: bytes
    output_shape: str
    outputs: bytes

    @property
    def nbytes(self) -> int:
        """What it takes beside the store's own overhead (bookkeeping, the id index)."""
        return len(self.rows) + len(self.inputs) + len(self.outputs) + 64


def stored(
    model: str,
    version: int,
    ids: Sequence[str],
    times: Sequence[float],
    labels: Sequence[str | None],
    traces: Sequence[str | None] | None,
    inputs: np.ndarray,
    outputs: np.ndarray,
) -> Stored:
    """Predictions of one model version as one stored batch: ``inputs`` [n, ...] and
    ``outputs`` [n, ...] float32 (made so if they are not; uint8 inputs are 8-bit values,
    ``wire``); inputs of :data:`PACK_FROM` bytes or more as float32 packed one by one
    (:func:`pack_rows`)."""
    n = len(ids)
    x = inputs if inputs.dtype == np.uint8 else as_stored(inputs)
    y = as_stored(outputs)
    head: dict[str, object] = {"ids": ids, "times": times, "labels": labels}
    if traces is not None and any(t is not None for t in traces):
        head["traces"] = traces
    if n and x.size * STORED_DTYPE.itemsize // n >= PACK_FROM:
        parts = pack_rows(x)
        head["at"] = [0, *itertools.accumulate(len(part) for part in parts)]
        raw = b"".join(parts)
    else:
        raw = as_stored(x).tobytes()
    return Stored(
        float(min(times)) if n else 0.0, model, int(version), n, orjson.dumps(head).decode(),
        orjson.dumps(list(x.shape[1:])).decode(), raw,
        orjson.dumps(list(y.shape[1:])).decode(), y.tobytes(),
    )  # fmt: skip


def as_stored(array: np.ndarray) -> np.ndarray:
    """``array`` as the log stores it: contiguous little-endian float32 (a copy only if not)."""
    if array.dtype == STORED_DTYPE and array.flags.c_contiguous:
        return array
    return np.ascontiguousarray(array, dtype=STORED_DTYPE)


def batches_of(predictions: Sequence[Prediction]) -> list[Stored]:
    """``predictions`` stored one per batch (retention then takes them one at a time; the
    log writer stores together what a service process sent together)."""
    return [
        stored(p.model, p.version, [p.id], [float(p.time)], [p.label], [p.trace_id],
               np.asarray(p.inputs)[np.newaxis], np.asarray(p.outputs)[np.newaxis])
        for p in predictions
    ]  # fmt: skip


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
