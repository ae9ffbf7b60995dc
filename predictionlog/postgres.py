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

from predictionlog.records import Stored
from predictionlog.sql import SQLStore

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger("nnserve.predictionlog")

#: What an id adds to a prediction's size (its index entry, about).
ID_BYTES = 48
#: Seconds to wait for the server when (re)connecting.
CONNECT_TIMEOUT = 10

#: Serializes schema creation between processes starting at once (CREATE TABLE IF NOT
#: EXISTS alone can race on the catalog). An arbitrary constant: "nnserve" in ASCII.
_SCHEMA_LOCK_KEY = 0x6E6E7365727665

_TABLES = (
    """CREATE TABLE IF NOT EXISTS prediction_batches (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time DOUBLE PRECISION NOT NULL,
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        n INTEGER NOT NULL,
        rows JSONB NOT NULL,
        input_shape TEXT NOT NULL,
        inputs BYTEA NOT NULL,
        output_shape TEXT NOT NULL,
        outputs BYTEA NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS prediction_ids (
        id TEXT PRIMARY KEY,
        batch BIGINT NOT NULL,
        row INTEGER NOT NULL
    )""",
)
_SCHEMA = (
    *_TABLES,
    """CREATE OR REPLACE VIEW predictions AS SELECT
        i.id AS id,
        (b.rows -> 'times' ->> i.row)::float8 AS time,
        b.model AS model,
        b.version AS version,
        CASE WHEN b.rows -> 'at' IS NULL
            THEN substring(b.inputs FROM i.row * (octet_length(b.inputs) / b.n) + 1
                           FOR octet_length(b.inputs) / b.n)
            ELSE substring(b.inputs FROM (b.rows -> 'at' ->> i.row)::int + 1
                           FOR (b.rows -> 'at' ->> (i.row + 1))::int
                               - (b.rows -> 'at' ->> i.row)::int)
        END AS inputs,
        b.input_shape AS input_shape,
        substring(b.outputs FROM i.row * (octet_length(b.outputs) / b.n) + 1
                  FOR octet_length(b.outputs) / b.n) AS outputs,
        b.output_shape AS output_shape,
        b.rows -> 'labels' ->> i.row AS label,
        b.rows -> 'traces' ->> i.row AS trace_id,
        i.batch * 1048576 + i.row AS seq
    FROM prediction_ids i JOIN prediction_batches b ON b.id = i.batch""",
    """CREATE TABLE IF NOT EXISTS feedback (
        id TEXT PRIMARY KEY REFERENCES prediction_ids (id),
        label TEXT NOT NULL,
        time DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS feedback_time ON feedback (time)",
    """CREATE TABLE IF NOT EXISTS actuals (
        id TEXT NOT NULL REFERENCES prediction_ids (id),
        step INTEGER NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (id, step)
    )""",
    "CREATE INDEX IF NOT EXISTS actuals_time ON actuals (time)",
)
#: A log made with a row per prediction (before batches): its rows become batches of one,
#: and feedback and actuals refer to the ids instead.
_CONVERT = (
    *_TABLES,
    "ALTER TABLE predictions ADD COLUMN IF NOT EXISTS trace_id TEXT",
    """INSERT INTO prediction_batches
        (time, model, version, n, rows, input_shape, inputs, output_shape, outputs)
    SELECT time, model, version, 1,
        jsonb_build_object('ids', jsonb_build_array(id), 'times', jsonb_build_array(time),
                           'labels', jsonb_build_array(label),
                           'traces', jsonb_build_array(trace_id)),
        input_shape, inputs, output_shape, outputs
    FROM predictions ORDER BY seq""",
    "INSERT INTO prediction_ids (id, batch, row) "
    "SELECT rows -> 'ids' ->> 0, id, 0 FROM prediction_batches",
    "ALTER TABLE IF EXISTS feedback DROP CONSTRAINT IF EXISTS feedback_id_fkey",
    "ALTER TABLE IF EXISTS actuals DROP CONSTRAINT IF EXISTS actuals_id_fkey",
    "DROP TABLE predictions",
    *_SCHEMA,
    "ALTER TABLE feedback DROP CONSTRAINT IF EXISTS feedback_id_fkey",  # new tables have it
    "ALTER TABLE actuals DROP CONSTRAINT IF EXISTS actuals_id_fkey",
    "ALTER TABLE feedback ADD CONSTRAINT feedback_id_fkey "
    "FOREIGN KEY (id) REFERENCES prediction_ids (id)",
    "ALTER TABLE actuals ADD CONSTRAINT actuals_id_fkey "
    "FOREIGN KEY (id) REFERENCES prediction_ids (id)",
)
#: A batch row and its ids, in one statement (``records.Stored``'s fields in order).
INSERT_BATCH_AND_IDS = (
    "WITH b AS (INSERT INTO prediction_batches (time, model, version, n, rows, input_shape, "
    "inputs, output_shape, outputs) VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s) "
    "RETURNING id, rows) "
    "INSERT INTO prediction_ids (id, batch, row) SELECT e.value, b.id, e.ordinality - 1 "
    "FROM b, jsonb_array_elements_text(b.rows -> 'ids') WITH ORDINALITY AS e(value, ordinality) "
    "ON CONFLICT (id) DO NOTHING"
)


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
    batch_key = "id"
    batch_ids = (
        "SELECT jsonb_array_elements_text(b.rows -> 'ids') FROM prediction_batches b WHERE b.id = ?"
    )
    measure_every = 30.0  # the count scans the batches

    def __init__(self, url: str) -> None:
        self._url = url  # may hold a password: never logged or shown
        self._lock = threading.Lock()
        self._closed = False
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = _connect(url)
        try:
            with self._transaction() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_KEY,))
                old = conn.execute(
                    "SELECT 1 FROM information_schema.tables WHERE table_schema = "
                    "current_schema() AND table_name = 'predictions' "
                    "AND table_type = 'BASE TABLE'"
                ).fetchone()
                if old:
                    logger.info("converting the prediction log to batches")
                for statement in _CONVERT if old else _SCHEMA:
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

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            self._closed = True
        if conn is not None:
            conn.close()

    def _live_bytes(self, conn: Any, rows: int) -> int:
        """Rows times the mean size of the newest predictions (their batches' and an id's):
        the live data, which is what the byte bound counts here. Deleted rows' space is
        reused by autovacuum, not given back to the file system, so the relation's files
        settle near this plus indexes."""
        if rows == 0:
            return 0
        size, n = conn.execute(
            "SELECT sum(pg_column_size(b.*)), sum(b.n) FROM "
            "(SELECT * FROM prediction_batches ORDER BY id DESC LIMIT 50) b"
        ).fetchone()
        return int(rows * (float(size or 0) / max(1, int(n or 0)) + ID_BYTES))

    def _insert(self, conn: Any, batch: Stored) -> None:
        conn.execute(INSERT_BATCH_AND_IDS, batch)
