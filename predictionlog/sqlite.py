"""The embedded store: one SQLite file in WAL mode, shared by threads and processes.

WAL lets readers (the retraining pipeline, a ``sqlite3`` shell) run while the service
writes; ``synchronous=NORMAL`` keeps commits cheap (a power cut may lose the last few
transactions, never corrupt the file). Writers in other processes wait on the file lock
(busy timeout) instead of failing. Within a process one connection is shared under a lock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from predictionlog.records import (
    COLUMNS,
    Feedback,
    FeedbackConflict,
    Prediction,
    UnknownPrediction,
    from_row,
    to_row,
)

logger = logging.getLogger("nnserve.predictionlog")

#: How long a statement waits for another process's write lock before it fails (seconds).
BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    inputs BLOB NOT NULL,
    input_shape TEXT NOT NULL,
    outputs BLOB NOT NULL,
    output_shape TEXT NOT NULL,
    label TEXT
);
CREATE INDEX IF NOT EXISTS predictions_model_time ON predictions (model, time);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY REFERENCES predictions (id),
    label TEXT NOT NULL,
    time REAL NOT NULL
);
"""

_INSERT = f"INSERT INTO predictions ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) " + (
    "ON CONFLICT (id) DO NOTHING"
)
_PREFIXED = ", ".join(f"p.{column.strip()}" for column in COLUMNS.split(","))


class SQLiteStore:
    """A :class:`~predictionlog.store.Store` in one SQLite file (created with its folders)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; writes say BEGIN IMMEDIATE themselves,
        # so a writer takes the file lock up front (and waits for it) instead of failing later.
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("SQLite prediction log %s is in %s mode, not WAL", self.path, mode)
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            with self._transaction() as conn:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise sqlite3.ProgrammingError(f"{self!r} is closed")
            yield self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock from its first statement."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def write_predictions(self, rows: Sequence[Prediction]) -> None:
        if not rows:
            return
        values = [to_row(row) for row in rows]  # encode before taking the lock
        with self._transaction() as conn:
            conn.executemany(_INSERT, values)

    def get_prediction(self, id: str) -> Prediction | None:
        with self._connection() as conn:
            row = conn.execute(f"SELECT {COLUMNS} FROM predictions WHERE id = ?", (id,)).fetchone()
        return None if row is None else from_row(row)

    def record_feedback(self, feedback: Feedback) -> bool:
        with self._connection() as conn:
            # One statement: stored only if the prediction exists and no feedback is there yet.
            inserted = conn.execute(
                "INSERT INTO feedback (id, label, time) SELECT ?, ?, ? "
                "WHERE EXISTS (SELECT 1 FROM predictions WHERE id = ?) "
                "ON CONFLICT (id) DO NOTHING",
                (feedback.id, feedback.label, float(feedback.time), feedback.id),
            ).rowcount
            if inserted:
                return True
            row = conn.execute("SELECT label FROM feedback WHERE id = ?", (feedback.id,)).fetchone()
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
                "WHERE p.model = ? ORDER BY p.time, p.rowid",
                (model,),
            ).fetchall()
        return [(from_row(row), str(row[9])) for row in rows]

    def count_predictions(self, model: str | None = None) -> int:
        with self._connection() as conn:
            if model is None:
                row = conn.execute("SELECT count(*) FROM predictions").fetchone()
            else:
                row = conn.execute(
                    "SELECT count(*) FROM predictions WHERE model = ?", (model,)
                ).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
