"""The shared store: PostgreSQL through psycopg 3, for several replicas writing one log.

psycopg is imported only when a PostgresStore is made, so the package (and the SQLite
default) works without it. The connection runs in autocommit mode with explicit
transactions; one connection per store, shared by threads under a lock, reopened when the
server has dropped it (a restart or failover costs the write in flight, not the writer).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from predictionlog.records import (
    COLUMNS,
    Feedback,
    FeedbackConflict,
    Prediction,
    UnknownPrediction,
    from_row,
    to_row,
)

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("nnserve.predictionlog")

#: Seconds to wait for the server when (re)connecting.
CONNECT_TIMEOUT = 10

#: Serializes schema creation between processes starting at once (CREATE TABLE IF NOT
#: EXISTS alone can race on the catalog). An arbitrary constant: "nnserve" in ASCII.
_SCHEMA_LOCK_KEY = 0x6E6E7365727665

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS predictions (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        id TEXT PRIMARY KEY,
        time DOUBLE PRECISION NOT NULL,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        inputs BYTEA NOT NULL,
        input_shape TEXT NOT NULL,
        outputs BYTEA NOT NULL,
        output_shape TEXT NOT NULL,
        label TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS predictions_model_time ON predictions (model, time)",
    """CREATE TABLE IF NOT EXISTS feedback (
        id TEXT PRIMARY KEY REFERENCES predictions (id),
        label TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL
    )""",
)

_INSERT = (
    f"INSERT INTO predictions ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (id) DO NOTHING"
)
_PREFIXED = ", ".join(f"p.{column.strip()}" for column in COLUMNS.split(","))


def _connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError(
            "a PostgreSQL prediction log needs psycopg 3: pip install 'psycopg[binary]'"
        ) from exc
    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)


class PostgresStore:
    """A :class:`~predictionlog.store.Store` in a PostgreSQL database (tables made if missing)."""

    def __init__(self, url: str) -> None:
        self._url = url  # may hold a password: never logged or shown
        self._lock = threading.Lock()
        self._closed = False
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = _connect(url)
        try:
            with self._transaction() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
                for statement in _SCHEMA:
                    conn.execute(statement)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return "PostgresStore(<url hidden>)"

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the PostgreSQL prediction log is closed")
            if self._conn is None or self._conn.closed or self._conn.broken:
                logger.warning("reconnecting to the PostgreSQL prediction log")
                self._conn = _connect(self._url)
            yield self._conn

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
        with self._connection() as conn, conn.transaction():
            yield conn

    def write_predictions(self, rows: Sequence[Prediction]) -> None:
        if not rows:
            return
        values = [to_row(row) for row in rows]  # encode before taking the lock
        with self._transaction() as conn, conn.cursor() as cursor:
            cursor.executemany(_INSERT, values)

    def get_prediction(self, id: str) -> Prediction | None:
        with self._connection() as conn:
            row = conn.execute(f"SELECT {COLUMNS} FROM predictions WHERE id = %s", (id,)).fetchone()
        return None if row is None else from_row(row)

    def record_feedback(self, feedback: Feedback) -> bool:
        with self._connection() as conn:
            # One statement: stored only if the prediction exists and no feedback is there yet.
            inserted = conn.execute(
                "INSERT INTO feedback (id, label, time) SELECT %s, %s, %s "
                "WHERE EXISTS (SELECT 1 FROM predictions WHERE id = %s) "
                "ON CONFLICT (id) DO NOTHING",
                (feedback.id, feedback.label, float(feedback.time), feedback.id),
            ).rowcount
            if inserted:
                return True
            row = conn.execute(
                "SELECT label FROM feedback WHERE id = %s", (feedback.id,)
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
                f"SELECT {_PREFIXED}, f.label FROM predictions p JOIN feedback f ON f.id = p.id "
                "WHERE p.model = %s ORDER BY p.time, p.seq",
                (model,),
            ).fetchall()
        return [(from_row(row), str(row[9])) for row in rows]

    def count_predictions(self, model: str | None = None) -> int:
        with self._connection() as conn:
            if model is None:
                row = conn.execute("SELECT count(*) FROM predictions").fetchone()
            else:
                row = conn.execute(
                    "SELECT count(*) FROM predictions WHERE model = %s", (model,)
                ).fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            self._closed = True
        if conn is not None:
            conn.close()

    def __enter__(self) -> PostgresStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
