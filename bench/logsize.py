"""Bytes per logged prediction, per model, from the prediction log's SQLite file itself.

The file's growth over a run is no measure once retention prunes during it (the bench's log
reaches its bound: a model measured then showed a negative growth). Instead: each model's
rows' own bytes (ids, tensors, shapes, labels, times), times the file's overhead (pages in
use ÷ all rows' own bytes: page fill, the id index, row headers), read while the service
runs (WAL readers do not block the writer)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
