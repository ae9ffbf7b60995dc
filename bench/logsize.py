"""The prediction log in the bench: its start near the bound (:func:`fill`), bytes per
logged prediction (:func:`bytes_per_prediction`), drops and prunes (its cost:
``bench.logcost``).

Bytes per logged prediction, per model, come from the log's SQLite file itself.

The file's growth over a run is no measure once retention prunes during it (the bench's log
reaches its bound: a model measured then showed a negative growth). Instead: each model's
batches' own bytes (tensors, the ids, times and labels as JSON, shapes), times the file's
overhead (pages in use ÷ all batches' own bytes: page fill, the id index, row headers), per
prediction, read while the service runs (WAL readers do not block the writer)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np

from bench.harness import log_total
from predictionlog.records import stored
from predictionlog.sqlite import SQLiteStore

_BATCH_BYTES = (
    "length(model) + 32 + length(rows) + length(inputs) + length(input_shape) "
    "+ length(outputs) + length(output_shape)"
)


def bytes_per_prediction(database: Path, model: str) -> float:
    """Mean bytes of the file that one of ``model``'s logged predictions takes (0: none)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        rows, own = conn.execute(
            f"SELECT coalesce(sum(n), 0), coalesce(sum({_BATCH_BYTES}), 0) "
            "FROM prediction_batches WHERE model = ?",
            (model,),
        ).fetchone()
        everyone = conn.execute(f"SELECT coalesce(sum({_BATCH_BYTES}), 0) FROM prediction_batches")
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
#: ... each with this many bytes of incompressible input (stored as they are), in batches of
#: this many (about what a service at concurrency 64 sends in one of its 5 ms messages).
FILL_ROW_BYTES, FILL_BATCH = 1024, 32


def fill(database: Path, target: int) -> int:
    """Fill the SQLite log at ``database`` with synthetic predictions an hour old until the
    bytes its bound counts reach ``target``, so that the bench measures a log at its bound
    (a service's steady state: retention prunes as much as is logged) rather than a young
    one; the rows written."""
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((FILL_BATCH, FILL_ROW_BYTES // 4), "<f4")
    outputs = rng.random((FILL_BATCH, 10)).astype("<f4")
    written = 0
    at = time.time() - 3600
    with SQLiteStore(database) as store:
        while store.usage().bytes < target:
            batches = []
            for _ in range(64):
                ids = [f"fill-{written + i:010x}" for i in range(FILL_BATCH)]
                batches.append(stored(FILL_MODEL, 1, ids, [at] * FILL_BATCH,
                                      ["fill"] * FILL_BATCH, None, inputs, outputs))  # fmt: skip
                written += FILL_BATCH
            store.write_batches(batches)
    return written


def log_figures(port: int) -> dict[str, float]:
    """The prediction log's drops and prunes, once the writer has committed and reported
    everything sent so far (it measures about once a second)."""
    time.sleep(3.0)
    return {"dropped": log_total(port), "pruned": log_total(port, "pruned")}
