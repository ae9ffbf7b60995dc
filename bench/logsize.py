"""The prediction log in the bench: its start near the bound (:func:`fill`; from a model's
own rows, :func:`seed_and_fill`), bytes per logged prediction (:func:`bytes_per_prediction`),
drops and prunes (its cost: ``bench.logcost``).

Bytes per logged prediction, per model, come from the log's SQLite file itself.

The file's growth over a run is no measure once retention prunes during it (the bench's log
reaches its bound: a model measured then showed a negative growth). Instead: each model's
batches' own bytes (tensors, the ids, times and labels as JSON, shapes), times the file's
overhead (pages in use ÷ all batches' own bytes: page fill, the id index, row headers), per
prediction, read while the service runs (WAL readers do not block the writer)."""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import orjson

from bench.harness import check_answer, log_total, path_for, start_server, stop, wrk
from predictionlog.records import Stored, stored
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
#: 0.85 and 0.95); without a model to copy, with rows of this model name ...
FILL_FRACTION, FILL_MODEL = 0.9, "bench-fill"
#: ... each with this many bytes of incompressible input (stored as they are), in batches of
#: this many (about what a service at concurrency 64 sends in one of its 5 ms messages).
FILL_ROW_BYTES, FILL_BATCH = 1024, 32


def fill(database: Path, target: int, like: str | None = None) -> int:
    """Fill the SQLite log at ``database`` with predictions an hour old until the bytes its
    bound counts reach ``target``, so that the bench measures a log at its bound (a service's
    steady state: retention prunes as much as is logged) rather than a young one; the
    predictions written, each with an id of its own.

    With ``like``: copies of that model's batches already in the log (rows its service logged:
    their shapes, packing, labels and batch sizes), so that each logged prediction makes
    retention prune about one (a service that serves this model). Without: synthetic 1 KB
    rows of :data:`FILL_MODEL`."""
    at = time.time() - 3600
    with SQLiteStore(database) as store, closing(sqlite3.connect(database)) as pages:
        seeds = _logged(pages, like) if like else [_synthetic()]
        if not seeds:
            raise ValueError(f"no batch of {like!r} in {database} to copy")
        written = 0
        while _in_use(pages) < target:
            batches = []
            for k in range(64):
                seed = seeds[k % len(seeds)]
                head = orjson.loads(seed.rows)
                head.pop("traces", None)
                head["ids"] = [f"fill{written + i:016x}" for i in range(seed.n)]
                head["times"] = [at] * seed.n
                batches.append(seed._replace(time=at, rows=orjson.dumps(head).decode()))
                written += seed.n
            store.write_batches(batches)
    os.sync()  # the runs that follow must not pay for writing the fill back to the disk
    return written


#: The concurrency the seed rows are logged at (the log's cost's throughput cells' own).
SEED_CONCURRENCY = 64


def seed_and_fill(
    repository: Path,
    port: int,
    work: Path,
    data: Path,
    name: str,
    scenarios: dict[str, tuple[bytes, str, str]],
    target: int,
) -> int:
    """A log-on service logs a second of each of ``name``'s scenarios at concurrency 64 into
    ``data``, stops (flushing its log), and the log is filled with copies of those rows."""
    server = start_server(repository, port, work / "seed.log", True, data)
    try:
        for scenario, (body, ctype, hlen) in scenarios.items():
            body_file = work / f"{name}-{scenario}.body"
            body_file.write_bytes(body)
            url = f"http://127.0.0.1:{port}{path_for(name, scenario)}"
            check_answer(url, body, ctype, hlen)
            wrk(url, body_file, ctype, hlen, SEED_CONCURRENCY, 1.0)
    finally:
        stop(server)
    return fill(data / "predictions.db", target, like=name)


def _synthetic() -> Stored:
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((FILL_BATCH, FILL_ROW_BYTES // 4), "<f4")
    outputs = rng.random((FILL_BATCH, 10)).astype("<f4")
    n = FILL_BATCH
    return stored(FILL_MODEL, 1, [""] * n, [0.0] * n, ["fill"] * n, None, inputs, outputs)


def _logged(conn: sqlite3.Connection, model: str) -> list[Stored]:
    """Up to 256 of ``model``'s batches in the log, as stored."""
    found = conn.execute(
        "SELECT time, model, version, n, rows, input_shape, inputs, output_shape, outputs "
        "FROM prediction_batches WHERE model = ? LIMIT 256",
        (model,),
    )
    return [Stored(*row) for row in found]


def _in_use(conn: sqlite3.Connection) -> int:
    """The bytes of the pages in use, what the log's byte bound counts (``SQLiteStore``)."""
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * conn.execute("PRAGMA page_size").fetchone()[0])


def log_figures(port: int) -> dict[str, float]:
    """The prediction log's drops and prunes, once the writer has committed and reported
    everything sent so far (it measures about once a second)."""
    time.sleep(3.0)
    return {"dropped": log_total(port), "pruned": log_total(port, "pruned")}
