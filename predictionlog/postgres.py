"""The shared store: PostgreSQL through psycopg 3, for several replicas writing one log.

psycopg is imported only when a PostgresStore is made, so the package (and the SQLite
default) works without it. The connection runs in autocommit mode with explicit
transactions; one connection per store, shared by threads under a lock, reopened when the
server has dropped it (a restart or failover costs the write in flight, not the writer).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from predictionlog.sql import INSERT_PREDICTIONS, SQLStore

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
        label TEXT,
        trace_id TEXT
    )""",
    "DROP INDEX IF EXISTS predictions_model_time",
    "CREATE INDEX IF NOT EXISTS predictions_seq ON predictions (seq)",
    """CREATE TABLE IF NOT EXISTS feedback (
        id TEXT PRIMARY KEY REFERENCES predictions (id),
        label TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS feedback_time ON feedback (time)",
    """CREATE TABLE IF NOT EXISTS actuals (
        id TEXT NOT NULL REFERENCES predictions (id),
        step INTEGER NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (id, step)
    )""",
    "CREATE INDEX IF NOT EXISTS actuals_time ON actuals (time)",
)
#: Columns added since the table was first made: (name, type), added to an older table when
#: a store opens it (a nullable column: no rewrite; only when missing, since ALTER TABLE
#: locks the table even when it has nothing to do).
_ADDED = (("trace_id", "TEXT"),)


def _connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError(
            "a PostgreSQL prediction log needs psycopg 3: pip install 'psycopg[binary]'"
        ) from exc
    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)


class PostgresStore(SQLStore):
    """A :class:`~predictionlog.store.Store` in a PostgreSQL database (tables made if missing)."""

    placeholder = "%s"
    order = "seq"
    measure_every = 30.0  # count(*) scans the table

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
                present = {
                    row[0]
                    for row in conn.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = current_schema() AND table_name = 'predictions'"
                    )
                }
                for column, kind in _ADDED:
                    if column not in present:
                        logger.info("adding column %s to the predictions table", column)
                        conn.execute(
                            f"ALTER TABLE predictions ADD COLUMN IF NOT EXISTS {column} {kind}"
                        )
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

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            self._closed = True
        if conn is not None:
            conn.close()

    def _live_bytes(self, conn: Any, rows: int) -> int:
        """Rows times the mean size of the newest rows: the live data, which is what the
        byte bound counts here. Deleted rows' space is reused by autovacuum, not given back
        to the file system, so the relation's files settle near this plus indexes."""
        if rows == 0:
            return 0
        mean = conn.execute(
            "SELECT avg(pg_column_size(p.*)) FROM "
            "(SELECT * FROM predictions ORDER BY seq DESC LIMIT 200) p"
        ).fetchone()[0]
        return int(rows * float(mean or 0))

    def _insert(self, conn: Any, values: list[Any]) -> None:
        with conn.cursor() as cursor:
            cursor.executemany(self._sql(INSERT_PREDICTIONS), values)
