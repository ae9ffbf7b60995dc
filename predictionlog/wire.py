"""The messages between a service process and the log writer process, over a Unix
``SOCK_SEQPACKET`` socket (each message arrives whole or not at all).

A **batch** message carries predictions of one model version: a small JSON head (model,
version, time, ids, predicted labels, array shapes) and the raw little-endian float32 bytes
of the inputs and outputs, as they came out of onnxruntime, except inputs of 1 KB or more a
row whose every value is an integer from 0 to 255 (8-bit images as clients send them): those
go as bytes (``"u8": true`` in the head), a quarter of the bytes through the socket, and the
writer stores them as such (``records.pack_rows``) without checking them again (a
Fashion-MNIST image: 784 bytes instead of 3,136; side by side at concurrency 64, the writer's
CPU per image fell from 17.8-22.7 to 9.0-12.2 µs: its poll is four times longer, its commits
larger). With tracing on, the head also
lists each row's trace id (``traces``; absent otherwise). The service gathers the inference
runs of a few milliseconds into one message (:func:`merge`): then each row's own time is in
``times``. No pickle: the writer decodes with ``orjson`` and ``numpy.frombuffer``, and
nothing it reads can run code.

A connection first says what it is for, in one byte: ``D`` (it sends batches; the writer
reads it every few milliseconds) or ``C`` (it asks). Questions are one byte: ``F`` (commit
everything received, from every connection, then answer), ``S`` (answer with the writer's
figures). Answers are JSON.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from math import prod
from typing import NamedTuple

import numpy as np
import orjson

from predictionlog.records import PACK_FROM, STORED_DTYPE, Stored, as_stored, eight_bit, stored

BATCH, FLUSH, STATS, DROPPED = b"B", b"F", b"S", b"X"
#: What a connection says first: it sends batches, or it asks (flush, stats).
DATA, CONTROL = b"D", b"C"
#: Largest message either side sends or accepts; bigger batches are split into several.
MAX_MESSAGE = 64 * 1024
_HEAD = struct.Struct("<cI")  # kind, length of the JSON head
_DROPPED = struct.Struct("<cQ")  # kind, rows


class Batch(NamedTuple):
    """Predictions of one model version at one time, row ``i`` under ``ids[i]``."""

    model: str
    version: int
    time: float
    ids: Sequence[str]
    inputs: np.ndarray  # [n, ...] float32 (uint8 as decoded from 8-bit values)
    outputs: np.ndarray  # [n, k] float32
    labels: Sequence[str | None]
    #: Each row's trace id (the service traced the requests), or None: no trace ids at all.
    traces: Sequence[str | None] | None = None
    #: Each row's own time (several runs merged into one batch), or None: ``time`` for all.
    times: Sequence[float] | None = None

    def stored(self) -> Stored:
        """The batch as the store keeps it (``records.Stored``)."""
        times = [self.time] * len(self.ids) if self.times is None else self.times
        return stored(
            self.model, self.version, self.ids, times, self.labels, self.traces,
            self.inputs, self.outputs,
        )  # fmt: skip


def merge(batches: Sequence[Batch]) -> list[Batch]:
    """The batches as few: those of one model version with rows of the same shapes become one
    (rows in order, each keeping its time and trace id)."""
    groups: dict[tuple[object, ...], list[Batch]] = {}
    for b in batches:
        key = (b.model, b.version, b.inputs.shape[1:], b.outputs.shape[1:])
        groups.setdefault(key, []).append(b)
    merged = []
    for group in groups.values():
        if len(group) == 1:
            merged.append(group[0])
            continue
        traced = any(b.traces is not None for b in group)
        first = group[0]
        merged.append(
            Batch(
                first.model,
                first.version,
                first.time,
                [i for b in group for i in b.ids],
                np.concatenate([as_stored(b.inputs) for b in group]),
                np.concatenate([as_stored(b.outputs) for b in group]),
                [label for b in group for label in b.labels],
                [t for b in group for t in (b.traces or [None] * len(b.ids))] if traced else None,
                [t for b in group for t in (b.times or [b.time] * len(b.ids))],
            )
        )
    return merged


def fits(batch: Batch) -> bool:
    """Whether each of the batch's predictions fits in a message (see :func:`encode`)."""
    n = len(batch.ids)
    row = (batch.inputs.size + batch.outputs.size) * 4 // max(n, 1)
    return row + _per_row(batch) + 1024 <= MAX_MESSAGE


def _per_row(batch: Batch) -> int:
    """Head bytes per row: its id and label (and trace id, and time), as an upper bound."""
    return 64 + (40 if batch.traces is not None else 0) + (24 if batch.times is not None else 0)


def encode(batch: Batch) -> list[bytes]:
    """One or more messages of at most :data:`MAX_MESSAGE` bytes; a single prediction larger
    than that cannot be sent and gives ``[]`` (the caller counts it as dropped)."""
    inputs, outputs = _inputs(batch.inputs), as_stored(batch.outputs)
    n = len(batch.ids)
    per_row = _per_row(batch)
    if inputs.nbytes + outputs.nbytes + per_row * n + 512 <= MAX_MESSAGE:  # the usual case
        return [
            _message(batch, inputs, outputs, batch.ids, batch.labels, batch.traces, batch.times)
        ]
    step = max(1, (MAX_MESSAGE - 1024) // ((inputs.nbytes + outputs.nbytes) // n + per_row))
    messages = []
    for start in range(0, n, step):
        part = slice(start, min(n, start + step))
        traces = None if batch.traces is None else batch.traces[part]
        times = None if batch.times is None else batch.times[part]
        message = _message(
            batch, inputs[part], outputs[part], batch.ids[part], batch.labels[part], traces, times
        )
        if len(message) > MAX_MESSAGE:
            return []
        messages.append(message)
    return messages


def _inputs(x: np.ndarray) -> np.ndarray:
    """The inputs as they go: as bytes when every row takes :data:`PACK_FROM` bytes or more as
    float32 and each of its values is an integer from 0 to 255, else float32."""
    x = as_stored(x)
    if not len(x) or x.nbytes // len(x) < PACK_FROM:
        return x
    small, exact = eight_bit(x)
    return small if exact.all() else x


def _message(
    batch: Batch,
    inputs: np.ndarray,
    outputs: np.ndarray,
    ids: Sequence[str],
    labels: Sequence[str | None],
    traces: Sequence[str | None] | None,
    times: Sequence[float] | None,
) -> bytes:
    head: dict[str, object] = {
        "model": batch.model,
        "version": batch.version,
        "time": batch.time,
        "ids": ids,
        "labels": labels,
        "inputs": inputs.shape[1:],
        "outputs": outputs.shape[1:],
    }
    if inputs.dtype == np.uint8:
        head["u8"] = True
    if traces is not None:
        head["traces"] = traces
    if times is not None:
        head["times"] = times
    head_bytes = orjson.dumps(head)
    return b"".join((_HEAD.pack(BATCH, len(head_bytes)), head_bytes, inputs.data, outputs.data))


def encode_dropped(rows: int) -> bytes:
    return _DROPPED.pack(DROPPED, rows)


def decode_dropped(message: bytes) -> int:
    try:
        return int(_DROPPED.unpack(message)[1])
    except struct.error as exc:
        raise ValueError(f"malformed dropped message: {exc}") from exc


def decode(message: bytes) -> Batch:
    """The inverse of :func:`encode` for one message; ``ValueError`` for anything malformed."""
    try:
        kind, length = _HEAD.unpack_from(message)
        if kind != BATCH:
            raise ValueError(f"not a batch message: {kind!r}")
        start = _HEAD.size + length
        head = orjson.loads(message[_HEAD.size : start])
        ids, labels, traces, times = (
            head["ids"],
            head["labels"],
            head.get("traces"),
            head.get("times"),
        )
        n = len(ids)
        in_shape, out_shape = (n, *head["inputs"]), (n, *head["outputs"])
        in_type = np.dtype(np.uint8) if head.get("u8") else STORED_DTYPE
        in_bytes = prod(in_shape) * in_type.itemsize
        inputs = np.frombuffer(message, in_type, prod(in_shape), start).reshape(in_shape)
        outputs = np.frombuffer(message, STORED_DTYPE, prod(out_shape), start + in_bytes).reshape(
            out_shape
        )
        if len(labels) != n or len(message) != start + in_bytes + outputs.nbytes:
            raise ValueError("the ids, labels and tensors do not match")
        if traces is not None and len(traces) != n:
            raise ValueError("the ids and trace ids do not match")
        if times is not None:
            if len(times) != n:
                raise ValueError("the ids and times do not match")
            times = np.asarray(times, dtype=np.float64).tolist()  # numbers, or ValueError
        return Batch(
            str(head["model"]), int(head["version"]), float(head["time"]), ids, inputs, outputs,
            labels, traces, times,
        )  # fmt: skip
    except (struct.error, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed batch message: {exc}") from exc


__all__ = [
    "BATCH", "CONTROL", "DATA", "DROPPED", "FLUSH", "MAX_MESSAGE", "STATS", "Batch", "decode",
    "decode_dropped", "encode", "encode_dropped", "fits", "merge",
]  # fmt: skip
