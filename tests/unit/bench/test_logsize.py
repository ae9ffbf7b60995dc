"""make bench's bytes per logged prediction, per model, read from a real SQLite log that
holds several models and has been pruned (what the file's growth could not tell)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from bench.logsize import FILL_MODEL, FILL_ROW_BYTES, bytes_per_prediction, fill
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
        store.write_batches([logged("tabular", 100, 30, start).stored()])
        store.write_batches([logged("images", 100, 784, start).stored()])
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


def test_the_bench_log_starts_filled_near_its_bound(tmp_path: Path) -> None:
    """``fill`` brings a log to a byte target with old 1 KB rows of their own model name,
    stored as they are (noise: no compression), so that a bench measures a log at its bound
    and its own models' bytes per prediction stay apart."""
    path = tmp_path / "predictions.db"
    target = 8_000_000
    written = fill(path, target)
    with SQLiteStore(path) as store:
        usage = store.usage()
        assert store.count_predictions(FILL_MODEL) == usage.rows == written
        first = store.get_prediction(f"fill{0:016x}")
    assert target <= usage.bytes < target + 4096 * 2 * FILL_ROW_BYTES  # one step over at most
    assert first is not None and first.inputs.shape == (FILL_ROW_BYTES // 4,)
    assert usage.oldest is not None and usage.oldest < time.time() - 3000
    assert bytes_per_prediction(path, FILL_MODEL) > FILL_ROW_BYTES
    with closing(sqlite3.connect(path)) as conn:
        (stored,) = conn.execute("SELECT length(inputs) FROM predictions LIMIT 1").fetchone()
    assert stored == FILL_ROW_BYTES


def test_a_models_log_fills_with_copies_of_its_own_rows(tmp_path: Path) -> None:
    """With ``like``, ``fill`` copies the batches the model already has in the log (the
    service's own rows, packed as it packs them) with fresh ids and old times, so that a
    bench's retention prunes that model's predictions, one for about each one logged."""
    path = tmp_path / "predictions.db"
    with SQLiteStore(path) as store:
        for start in range(0, 300, 30):
            store.write_batches([logged("images", 30, 784, start).stored()])
        seeded = store.get_prediction("images-00000031")
    written = fill(path, 4_000_000, like="images")
    with SQLiteStore(path) as store:
        usage = store.usage()
        assert store.count_predictions("images") == usage.rows == written + 300
        copy = store.get_prediction(f"fill{31:016x}")  # the second row of the second seed
    assert 4_000_000 <= usage.bytes < 4_000_000 + 64 * 30 * 794 * 4 * 2  # one step over at most
    assert seeded is not None and copy is not None
    np.testing.assert_array_equal(copy.inputs, seeded.inputs)
    np.testing.assert_array_equal(copy.outputs, seeded.outputs)
    assert (copy.model, copy.label) == ("images", "a") and copy.time < time.time() - 3000
    with closing(sqlite3.connect(path)) as conn:
        query = "SELECT count(id), count(DISTINCT id) FROM predictions"
        ids, distinct = conn.execute(query).fetchone()
        assert ids == distinct == usage.rows
    with pytest.raises(ValueError, match="absent"):
        fill(path, 8_000_000, like="absent")
