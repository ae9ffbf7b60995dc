"""make bench's bytes per logged prediction, per model, read from a real SQLite log that
holds several models and has been pruned (what the file's growth could not tell)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np

from bench.harness import Row
from bench.logsize import FILL_MODEL, FILL_ROW_BYTES, bytes_per_prediction, fill, log_cost
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
        first = store.get_prediction("fill-0000000000")
    assert target <= usage.bytes < target + 4096 * 2 * FILL_ROW_BYTES  # one step over at most
    assert first is not None and first.inputs.shape == (FILL_ROW_BYTES // 4,)
    assert usage.oldest is not None and usage.oldest < time.time() - 3000
    assert bytes_per_prediction(path, FILL_MODEL) > FILL_ROW_BYTES
    with closing(sqlite3.connect(path)) as conn:
        (stored,) = conn.execute("SELECT length(inputs) FROM predictions LIMIT 1").fetchone()
    assert stored == FILL_ROW_BYTES


def test_the_cost_table_gives_medians_of_back_to_back_pairs() -> None:
    """Three off/on pairs of each cell: the medians, the pairs' range, drops summed."""

    def row(c: int, log: str, req_s: float, p99: float, dropped: float | None = None) -> Row:
        return Row("ann", "v1", 1, c, req_s, req_s, 0.1, p99, 0, None, log, dropped)

    rows = []
    for off64, on64, off1, on1 in ((10_000, 9_000, 0.30, 0.60), (12_000, 9_600, 0.40, 0.50),
                                   (11_000, 10_450, 0.35, 0.77)):  # fmt: skip
        rows += [row(64, "off", off64, 1), row(1, "off", 1, off1)]
        rows += [row(64, "on", on64, 1, 10), row(1, "on", 1, on1, 0)]
    lines = log_cost(rows, {"ann": (220.0, 5000.0)})
    assert "Medians of 3 runs" in lines[2]
    (table_row,) = [line for line in lines if line.startswith("| ann ")]
    cells = [cell.strip() for cell in table_row.strip("|").split("|")]
    # off 11,000 / on 9,600: 12.7 %; pairs 10.0 %, 20.0 %, 5.0 %
    assert cells[2:5] == ["11,000", "9,600", "12.7% (5.0% to 20.0%)"]
    assert cells[5] == "30"  # every on run's drops at concurrency 64
    # p99 medians 0.35 and 0.60: 1.71; pairs 2.00, 1.25, 2.20
    assert cells[6:9] == ["0.350", "0.600", "1.71 (1.25 to 2.20)"]
    assert cells[9:] == ["220", "5,000"]
    assert log_cost(rows[:4], {})[2].startswith("One run of each cell")
