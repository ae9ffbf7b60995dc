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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from predictionlog.sql import SQLStore

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


class SQLiteStore(SQLStore):
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

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
