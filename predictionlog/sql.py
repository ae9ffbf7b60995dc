"""The queries both SQL stores share; each backend supplies connections and transactions.

Statements are written with ``?`` placeholders and the backend's ``placeholder`` replaces
them, so SQLite and PostgreSQL run the same SQL and cannot drift apart.

The layout: predictions are stored as the writer receives them, a batch of one model
version per row of ``prediction_batches`` (``records.Stored``: the ids, times and labels as
JSON, the tensors as the rows' float32 bytes one after another), and ``prediction_ids``
maps each id to its batch and row. ``predictions`` is a view with one row per prediction
(``records.COLUMNS`` and ``seq``, the order of insertion), which every query reads, as can
``sqlite3`` and ``psql``. Why: a row per prediction cost the log writer 4-5 µs of SQLite
per prediction to insert and as much again to prune (per-row statements, a record and an
index entry each), most of its CPU at concurrency 64 on a shared core; a batch row is one
insert, the ids one ``INSERT ... SELECT`` over its JSON, and pruning deletes whole batches
(breast-cancer-ann at concurrency 64, a young log: the writer's CPU per prediction 10.8 ->
6.2 µs). A log made before this layout is converted when a store first opens it (one
transaction).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, Self

import numpy as np

from predictionlog.records import (
    COLUMNS,
    NCOLUMNS,
    Feedback,
    FeedbackConflict,
    Prediction,
    Stored,
    UnknownPrediction,
    batches_of,
    decode_array,
    from_row,
)
from predictionlog.retention import Usage

_PREFIXED = ", ".join(f"p.{column.strip()}" for column in COLUMNS.split(","))


class SQLStore:
    """A :class:`~predictionlog.store.Store` over a DB-API connection."""

    placeholder = "?"
    #: The view's column giving insertion order, to break ties between equal times.
    order = "seq"
    #: The batches table's key, in insertion order.
    batch_key = "rowid"
    #: The ids of the batch ``?`` (a subquery over its JSON).
    batch_ids = ""
    #: Seconds between the log writer's measurements of this store (``usage``), as costly
    #: as a count of the rows is here; in between it keeps its own figures.
    measure_every = 1.0

    def _connection(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def _insert(self, conn: Any, batch: Stored) -> None:
        """One batch row and its ids (an id already stored keeps its first prediction)."""
        raise NotImplementedError

    def write_predictions(self, rows: Sequence[Prediction]) -> None:
        self.write_batches(batches_of(rows))  # encoded before taking the lock

    def write_batches(
        self, batches: Sequence[Stored], pause: Callable[[], object] | None = None
    ) -> None:
        """Batches already encoded, in one transaction; with ``pause``, it is called after
        each: a writer sharing a core with the service offers it the CPU that often."""
        if not batches:
            return
        with self._transaction() as conn:
            for batch in batches:
                self._insert(conn, batch)
                if pause is not None:
                    pause()

    def get_prediction(self, id: str) -> Prediction | None:
        with self._connection() as conn:
            row = conn.execute(
                self._sql(f"SELECT {COLUMNS} FROM predictions WHERE id = ?"), (id,)
            ).fetchone()
        return None if row is None else from_row(row)

    def record_feedback(self, feedback: Feedback) -> bool:
        with self._connection() as conn:
            # One statement: stored only if the prediction exists and no feedback is there yet.
            inserted = conn.execute(
                self._sql(
                    "INSERT INTO feedback (id, label, time) SELECT ?, ?, ? "
                    "WHERE EXISTS (SELECT 1 FROM prediction_ids WHERE id = ?) "
                    "ON CONFLICT (id) DO NOTHING"
                ),
                (feedback.id, feedback.label, float(feedback.time), feedback.id),
            ).rowcount
            if inserted:
                return True
            row = conn.execute(
                self._sql("SELECT label FROM feedback WHERE id = ?"), (feedback.id,)
            ).fetchone()
        if row is None:
            raise UnknownPrediction(f"no logged prediction has id {feedback.id!r}")
        if row[0] != feedback.label:
            raise FeedbackConflict(
                f"prediction {feedback.id!r} already has feedback label {row[0]!r}"
            )
        return False

    def labelled(self, model: str) -> list[tuple[Prediction, str]]:
        with self._connection() as conn:
            rows = conn.execute(
                self._sql(
                    f"SELECT {_PREFIXED}, f.label FROM predictions p JOIN feedback f "
                    f"ON f.id = p.id WHERE p.model = ? ORDER BY p.time, p.{self.order}"
                ),
                (model,),
            ).fetchall()
        return [(from_row(row), str(row[NCOLUMNS])) for row in rows]

    def record_actuals(self, id: str, start: int, values: Sequence[float], time: float) -> int:
        """Actual values of a logged forecast from horizon step ``start`` (0-based); the
        number newly stored. Values already stored must be equal (FeedbackConflict)."""
        rows = [(id, start + i, float(v), float(time)) for i, v in enumerate(values)]
        with self._transaction() as conn:
            known = conn.execute(
                self._sql("SELECT 1 FROM prediction_ids WHERE id = ?"), (id,)
            ).fetchone()
            if known is None:
                raise UnknownPrediction(f"no logged prediction has id {id!r}")
            stored = dict(
                conn.execute(
                    self._sql("SELECT step, value FROM actuals WHERE id = ?"), (id,)
                ).fetchall()
            )
            for _, step, value, _ in rows:
                if step in stored and stored[step] != value:
                    raise FeedbackConflict(
                        f"prediction {id!r} already has actual value {stored[step]!r} at "
                        f"step {step}, not {value!r}"
                    )
            new = 0
            for row in rows:
                if row[1] not in stored:  # a concurrent piece may have stored it meanwhile
                    new += conn.execute(
                        self._sql(
                            "INSERT INTO actuals (id, step, value, time) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (id, step) DO NOTHING"
                        ),
                        row[:4],
                    ).rowcount
        return new

    def recent_actuals(
        self, model: str, version: int, window: int
    ) -> list[tuple[np.ndarray, int, float]]:
        """(forecast, step, actual value) of the last ``window`` actual values recorded for
        one model version: its live forecast error, the same from any process or replica."""
        with self._connection() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT p.outputs, p.output_shape, a.step, a.value FROM actuals a "
                    "JOIN predictions p ON p.id = a.id WHERE p.model = ? AND p.version = ? "
                    "ORDER BY a.time DESC, a.id, a.step LIMIT ?"
                ),
                (model, version, window),
            ).fetchall()
        return [(decode_array(o, str(shape)), int(step), float(v)) for o, shape, step, v in rows]

    def with_actuals(self, model: str) -> list[tuple[Prediction, dict[int, float]]]:
        """Every logged forecast of ``model`` (any version) with actual values, and those
        values by step (0-based), oldest prediction first."""
        with self._connection() as conn:
            rows = conn.execute(
                self._sql(
                    f"SELECT {_PREFIXED}, a.step, a.value FROM predictions p JOIN actuals a "
                    f"ON a.id = p.id WHERE p.model = ? ORDER BY p.time, p.{self.order}, a.step"
                ),
                (model,),
            ).fetchall()
        found: dict[str, tuple[Prediction, dict[int, float]]] = {}
        for row in rows:
            ident = str(row[0])
            if ident not in found:
                found[ident] = (from_row(row), {})
            found[ident][1][int(row[NCOLUMNS])] = float(row[NCOLUMNS + 1])
        return list(found.values())

    def count_predictions(self, model: str | None = None) -> int:
        with self._connection() as conn:
            if model is None:
                row = conn.execute("SELECT count(*) FROM predictions").fetchone()
            else:
                row = conn.execute(
                    self._sql("SELECT count(*) FROM predictions WHERE model = ?"), (model,)
                ).fetchone()
        assert row is not None
        return int(row[0])

    def recent_outcomes(self, model: str, version: int, window: int) -> tuple[int, int]:
        with self._connection() as conn:
            rows = conn.execute(
                self._sql(
                    "SELECT p.label = f.label FROM feedback f JOIN predictions p ON p.id = f.id "
                    "WHERE p.model = ? AND p.version = ? ORDER BY f.time DESC LIMIT ?"
                ),
                (model, version, window),
            ).fetchall()
        return sum(1 for (right,) in rows if right), len(rows)

    # -- retention -------------------------------------------------------------------------
    def _live_bytes(self, conn: Any, rows: int) -> int:
        raise NotImplementedError

    def _count(self, conn: Any) -> int:
        row = conn.execute("SELECT coalesce(sum(n), 0) FROM prediction_batches").fetchone()
        return int(row[0])

    def usage(self) -> Usage:
        with self._connection() as conn:
            rows = self._count(conn)
            oldest = conn.execute(
                f"SELECT time FROM prediction_batches ORDER BY {self.batch_key} LIMIT 1"
            ).fetchone()
            return Usage(rows, self._live_bytes(conn, rows), None if oldest is None else oldest[0])

    def prune_oldest(
        self,
        n: int,
        older_than: float | None = None,
        pause: Callable[[], object] | None = None,
    ) -> int:
        """Remove the oldest batches (in insertion order; those whose oldest prediction is
        before ``older_than`` only, if set) holding at most ``n`` predictions, or the oldest
        one if it holds more, with their feedback, in one transaction; the predictions
        removed. With ``pause``, it is called after each batch (as ``write_batches``)."""
        if n <= 0:
            return 0
        key = self.batch_key
        owned = f"SELECT id FROM prediction_ids WHERE batch = ? AND id IN ({self.batch_ids})"
        with self._transaction() as conn:
            oldest = conn.execute(
                self._sql(f"SELECT {key}, time, n FROM prediction_batches ORDER BY {key} LIMIT ?"),
                (n,),
            ).fetchall()
            if older_than is not None:  # stop at the first newer one (a clock may step back)
                oldest = list(itertools.takewhile(lambda row: row[1] < older_than, oldest))
            removed = 0
            # most logs have little or no ground truth: a table without any is not asked
            tables = [
                table
                for table in ("feedback", "actuals")
                if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
            ]
            for batch, _, size in oldest:
                if removed and removed + size > n:
                    break
                for table in tables:
                    conn.execute(
                        self._sql(f"DELETE FROM {table} WHERE id IN ({owned})"), (batch, batch)
                    )
                conn.execute(
                    self._sql(f"DELETE FROM prediction_ids WHERE batch = ? AND id IN "
                              f"({self.batch_ids})"),
                    (batch, batch),
                )  # fmt: skip
                conn.execute(self._sql(f"DELETE FROM prediction_batches WHERE {key} = ?"), (batch,))
                removed += int(size)
                if pause is not None:
                    pause()
        return removed

    def reclaim(self, keep: int = 0) -> None:
        """Give freed space back beyond ``keep`` bytes; engines that reuse it by themselves
        need nothing."""

    def saturated(self, busy: bool) -> None:
        """A hint only SQLite uses (its checkpoints)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
