"""The prediction log in the bench: its start near the bound (:func:`fill`), bytes per
logged prediction (:func:`bytes_per_prediction`), drops and prunes, and the cost table.

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
from statistics import median

import numpy as np

from bench.harness import Row, log_total
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


def log_cost(rows: list[Row], stored: dict[str, tuple[float, float]]) -> list[str]:
    """What the prediction log costs, from the same run: throughput at concurrency 64 and p99
    at concurrency 1, log on against log off, per model and protocol (single samples). With
    several runs of a cell (``--cost-runs``), the medians, and in brackets the range of the
    back-to-back off/on pairs (the n-th off run of a cell with its n-th on run)."""
    cells: dict[tuple[str, str, int, int, str], list[Row]] = {}
    for r in rows:
        cells.setdefault(
            (r.model, r.scenario, r.batch, r.concurrency, r.prediction_log), []
        ).append(r)
    runs = max((len(c) for c in cells.values()), default=1)
    lines = [
        "## The prediction log's cost (same run; targets: cost ≤ 15 %, p99 ratio ≤ 2)",
        "",
        f"Medians of {runs} runs of each cell, off and on back to back each time (in brackets: "
        "the lowest and highest of those pairs)."
        if runs > 1
        else "One run of each cell, off and on back to back.",
        "",
        "| model | scenario | c=64 req/s off | on | cost | dropped at c=64 | p99 c=1 off ms "
        "| on ms | p99 ratio | bytes per prediction | pruned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, scenario, batch, concurrency, log), offs in cells.items():
        ons = cells.get((model, scenario, batch, concurrency, "on"))
        if (batch, concurrency, log) != (1, 64, "off") or not ons:
            continue
        offs_1, ons_1 = cells[(model, scenario, 1, 1, "off")], cells[(model, scenario, 1, 1, "on")]
        off, on = median(r.req_s for r in offs), median(r.req_s for r in ons)
        off_1, on_1 = median(r.p99_ms for r in offs_1), median(r.p99_ms for r in ons_1)
        costs = [1 - b.req_s / a.req_s for a, b in zip(offs, ons, strict=False)]
        ratios = [b.p99_ms / a.p99_ms for a, b in zip(offs_1, ons_1, strict=False)]
        size, pruned = stored.get(model, (0, 0))
        lines.append(
            f"| {model} | {scenario} | {off:,.0f} | {on:,.0f} | {1 - on / off:.1%}"
            f"{_spread(costs, '.1%')} | {sum(r.dropped or 0 for r in ons):,.0f} | "
            f"{off_1:.3f} | {on_1:.3f} | {on_1 / off_1:.2f}{_spread(ratios, '.2f')} | "
            f"{size:,.0f} | {pruned:,.0f} |"
        )
    return [*lines, ""] if len(lines) > 6 else []


def _spread(values: list[float], spec: str) -> str:
    return f" ({min(values):{spec}} to {max(values):{spec}})" if len(values) > 1 else ""
