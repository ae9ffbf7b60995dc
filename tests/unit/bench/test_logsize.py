"""make bench's bytes per logged prediction, per model, read from a real SQLite log that
holds several models and has been pruned (what the file's growth could not tell)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np

from bench.logsize import bytes_per_prediction
from predictionlog import Batch
from predictionlog.sqlite import SQLiteStore


def logged(model: str, n: int, width: int, start: int) -> Batch:
    rng = np.random.default_rng(start)
    return Batch(
        model,
        1,
        time.time(),
        [f"{model}-{start + i:08d}" for i in range(n)],
        rng.random((n, width), dtype=np.float32),
        rng.random((n, 10), dtype=np.float32),
        ["a"] * n,
    )


def test_each_models_share_of_the_file_per_prediction(tmp_path: Path) -> None:
    path = tmp_path / "predictions.db"
    store = SQLiteStore(path)
    for start in range(0, 2000, 100):
        store.write_rows(list(logged("tabular", 100, 30, start).rows()))
        store.write_rows(list(logged("images", 100, 784, start).rows()))
    store.prune_oldest(1000)  # retention ran meanwhile: the file did not grow by these rows
    usage = store.usage()
    store.close()
    tabular = bytes_per_prediction(path, "tabular")
    images = bytes_per_prediction(path, "images")
    assert bytes_per_prediction(path, "absent") == 0.0
    # each at least its own tensors (30 or 784 inputs and 10 outputs, float32), plus overhead
    assert 40 * 4 < tabular < 40 * 4 * 3
    assert 794 * 4 < images < 794 * 4 * 1.5
    # together they account for the pages in use
    rows = {"tabular": 0, "images": 0}
    with closing(sqlite3.connect(path)) as conn:
        for model, count in conn.execute("SELECT model, count(*) FROM predictions GROUP BY model"):
            rows[model] = count
    total = rows["tabular"] * tabular + rows["images"] * images
    assert abs(total - usage.bytes) < 0.01 * usage.bytes
