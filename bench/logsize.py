"""Bytes per logged prediction, per model, from the prediction log's SQLite file itself.

The file's growth over a run is no measure once retention prunes during it (the bench's log
reaches its bound: a model measured then showed a negative growth). Instead: each model's
rows' own bytes (ids, tensors, shapes, labels, times), times the file's overhead (pages in
use ÷ all rows' own bytes: page fill, the id index, row headers), read while the service
runs (WAL readers do not block the writer)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np

from predictionlog.sqlite import SQLiteStore

_ROW_BYTES = (
    "length(id) + length(model) + 8 + 8 + length(inputs) + length(input_shape) "
    "+ length(outputs) + length(output_shape) + coalesce(length(label), 0) "
    "+ coalesce(length(trace_id), 0)"
)


def bytes_per_prediction(database: Path, model: str) -> float:
    """Mean bytes of the file that one of ``model``'s logged predictions takes (0: none)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows, own = conn.execute(
            f"SELECT count(*), coalesce(sum({_ROW_BYTES}), 0) FROM predictions WHERE model = ?",
            (model,),
        ).fetchone()
        everyone = conn.execute(f"SELECT coalesce(sum({_ROW_BYTES}), 0) FROM predictions")
        total = everyone.fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    if not rows or not total:
        return 0.0
    return float(own / rows * ((pages - free) * size / total))


#: The bench's log starts at this fraction of its byte bound (between retention's marks,
#: 0.85 and 0.95), filled with rows of this model name ...
FILL_FRACTION, FILL_MODEL = 0.9, "bench-fill"
#: ... each with this many bytes of incompressible input (stored as they are).
FILL_ROW_BYTES = 1024


def fill(database: Path, target: int) -> int:
    """Fill the SQLite log at ``database`` with synthetic predictions an hour old until the
    bytes its bound counts reach ``target``, so that the bench measures a log at its bound
    (a service's steady state: retention prunes as much as is logged) rather than a young
    one; the rows written."""
    rng = np.random.default_rng(0)
    inputs = [x.tobytes() for x in rng.standard_normal((64, FILL_ROW_BYTES // 4), "<f4")]
    outputs = rng.random(10).astype("<f4").tobytes()
    shape = f"[{FILL_ROW_BYTES // 4}]"
    written = 0
    at = time.time() - 3600
    with SQLiteStore(database) as store:
        while store.usage().bytes < target:
            rows = [
                (f"fill-{written + i:010x}", at, FILL_MODEL, 1, inputs[i % 64], shape, outputs,
                 "[10]", "fill", None)
                for i in range(4096)
            ]  # fmt: skip
            store.write_rows(rows)
            written += len(rows)
    return written
