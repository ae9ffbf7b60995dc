"""The queries both SQL stores share; each backend supplies connections and transactions.

Statements are written with ``?`` placeholders and the backend's ``placeholder`` replaces
them, so SQLite and PostgreSQL run the same SQL and cannot drift apart.
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
    Row,
    UnknownPrediction,
    decode_array,
    from_row,
    to_row,
)
from predictionlog.retention import Usage

_PREFIXED = ", ".join(f"p.{column.strip()}" for column in COLUMNS.split(","))


class SQLStore:
    """A :class:`~predictionlog.store.Store` over a DB-API connection."""

    placeholder = "?"
    #: A column giving insertion order, to break ties between equal times.
    order = "rowid"
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

    def _insert(self, conn: Any, values: list[Any]) -> None:
        conn.executemany(self._sql(INSERT_PREDICTIONS), values)

    def write_predictions(self, rows: Sequence[Prediction]) -> None:
        self.write_rows([to_row(row) for row in rows])  # encoded before taking the lock

    def write_rows(
        self, rows: Sequence[Row], pause: Callable[[], object] | None = None, chunk: int = 16
    ) -> None:
        """Rows already in :data:`COLUMNS` order, in one transaction (ids already stored are
        ignored). With ``pause``, it is called between chunks of ``chunk`` rows: a writer
        sharing a core with the service offers it the CPU that often."""
        if not rows:
            return
        with self._transaction() as conn:
            if pause is None:
                self._insert(conn, list(rows))
                return
            for start in range(0, len(rows), chunk):
                self._insert(conn, list(rows[start : start + chunk]))
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
                    "WHERE EXISTS (SELECT 1 FROM predictions WHERE id = ?) "
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
                self._sql("SELECT 1 FROM predictions WHERE id = ?"), (id,)
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
        row = conn.execute("SELECT count(*) FROM predictions").fetchone()
        return int(row[0])

    def usage(self) -> Usage:
        with self._connection() as conn:
            rows = self._count(conn)
            oldest = conn.execute(
                f"SELECT time FROM predictions ORDER BY {self.order} LIMIT 1"
            ).fetchone()
            return Usage(rows, self._live_bytes(conn, rows), None if oldest is None else oldest[0])

    def prune_oldest(
        self,
        n: int,
        older_than: float | None = None,
        pause: Callable[[], object] | None = None,
        chunk: int = 8,
    ) -> int:
        """Remove up to ``n`` oldest predictions (in insertion order; those before
        ``older_than`` only, if set) with their feedback, in one transaction. With ``pause``,
        in chunks of ``chunk`` predictions with a call between them (as ``write_rows``)."""
        if n <= 0:
            return 0
        with self._transaction() as conn:
            oldest = conn.execute(
                self._sql(
                    f"SELECT {self.order}, time FROM predictions ORDER BY {self.order} LIMIT ?"
                ),
                (n,),
            ).fetchall()
            if older_than is not None:  # stop at the first newer one (a clock may step back)
                oldest = list(itertools.takewhile(lambda row: row[1] < older_than, oldest))
            step = chunk if pause is not None else len(oldest) or 1
            removed = 0
            for start in range(0, len(oldest), step):
                last = oldest[start : start + step][-1][0]  # those before went in earlier chunks
                for table in ("feedback", "actuals"):
                    conn.execute(
                        self._sql(
                            f"DELETE FROM {table} WHERE id IN "
                            f"(SELECT id FROM predictions WHERE {self.order} <= ?)"
                        ),
                        (last,),
                    )
                removed += conn.execute(
                    self._sql(f"DELETE FROM predictions WHERE {self.order} <= ?"), (last,)
                ).rowcount
                if pause is not None:
                    pause()
        return int(removed)

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


INSERT_PREDICTIONS = (
    f"INSERT INTO predictions ({COLUMNS}) VALUES ({', '.join('?' * NCOLUMNS)}) "
    "ON CONFLICT (id) DO NOTHING"
)
