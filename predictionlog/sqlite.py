"""The embedded store: one SQLite file in WAL mode, shared by threads and processes.

WAL lets readers (the retraining pipeline, a ``sqlite3`` shell) run while the log writer
writes; ``synchronous=NORMAL`` keeps commits cheap (a power cut may lose the last few
transactions, never corrupt the file). Writers in other processes wait on the file lock
(busy timeout) instead of failing. Within a process one connection is shared under a lock.

Space: ``auto_vacuum=INCREMENTAL``, so pages freed by retention beyond what new rows will
fill (``Retention.slack``) go back to the file system with ``PRAGMA incremental_vacuum(N)``
(a file made before that mode is converted once, by a VACUUM, when opened); the WAL is
checkpointed every ``WAL_BYTES`` (in pages of the file's size) and truncated to ``WAL_LIMIT``
bytes after one.

The tables (``sql``'s docstring: a row per batch the writer received, an index of ids, a
view with a row per prediction) are made here, and a log with a row per prediction is
converted when opened (``_convert``). The three choices below were measured before batches,
with a row per prediction, on a log at its bound (a 64 MB bound, fashion-cnn rows of 3.3 KB,
the writer inserting 128 rows and pruning as many per round; CPU per row written): 31 µs
with SQLite's defaults as Debian builds it, 15 µs with them (12 µs vs 9 µs for 500-byte rows).

- Pages of ``PAGE_SIZE`` (4 KB) in a new file. With a row per prediction, 16 KB pages were
  faster (an image row filled a 4 KB page alone, so each row inserted or pruned allocated
  or freed a page of its own: insert 12 -> 9 µs, delete 18 -> 13 µs). With a row per batch
  they are not: a commit rewrites whole pages (the header, the pointer map, the freelist,
  the b-tree leaves it touched, each batch's last overflow page), and each is written twice
  (WAL, then checkpoint). At concurrency 64 the writer wrote 2,464 bytes per co2-lstm
  prediction (stored: 600) with 16 KB pages, 1,265 with 4 KB (fashion-cnn 3,053 vs 1,420);
  the log's cost fell in all seven cells compared side by side (e.g. breast-cancer-ann 10.6
  -> 3.9 %, fashion-cnn-int8 15.2 -> 8.3 %; a log at its 1 GB bound). A file made with other
  pages keeps them (changing needs a VACUUM).
- Foreign keys are declared but not enforced (``PRAGMA foreign_keys`` stays off): each
  statement that adds feedback or actuals checks its prediction in the same transaction,
  and pruning deletes a prediction's feedback and actuals before it in one transaction, so
  enforcement only repeated two lookups per pruned row (a third of a delete's cost: 18 -> 12
  µs). ``PRAGMA foreign_key_check`` finds none missing (the kill -9 test asks it).
- ``secure_delete=FAST``: Debian's SQLite overwrites every deleted row with zeros and writes
  each freed page back (``SQLITE_SECURE_DELETE``); FAST clears deleted content only where
  that costs no extra write (pruning 7.5 -> 6 µs a row). Pruned rows' bytes may stay in free
  pages until new rows take them (a full log reuses them within a tenth of its bound).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from predictionlog.records import Stored
from predictionlog.sql import SQLStore

logger = logging.getLogger("nnserve.predictionlog")

#: How long a statement waits for another process's write lock before it fails (seconds).
BUSY_TIMEOUT = 30.0
#: The page size of a new file (bytes; see the module docstring).
PAGE_SIZE = 4096
#: Each connection's page cache (KiB; SQLite's default here is 2 MB):
#: the b-tree pages at both ends of a large log, where rows are added and pruned, stay in it
#: (a log at a 400 MB bound: 19 -> 16 µs per image row written and pruned).
CACHE_KIB = 16384
#: WAL bytes between automatic checkpoints (each copies them into the file in one go: 1 MB
#: is about 0.6 ms here, 4 MB 2.5 ms, a stretch no pause splits; fashion-cnn-int8 at
#: concurrency 1 against a full log: p99 1.1 ms vs 1.3-1.5 ms), and the size the WAL is
#: truncated to after one.
WAL_BYTES, WAL_LIMIT = 1 << 20, 4 << 20
#: ... and while the service is saturated (``saturated``): every checkpoint waits for two
#: fsyncs, and at 1 MB a writer pruning a 1 GB log at concurrency 64 spent so long waiting
#: that it dropped 3,700 fashion-cnn-int8 rows in 12 s (none at 4 MB, none at 16 MB).
BUSY_WAL_BYTES = 4 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS prediction_batches (
    first INTEGER NOT NULL,
    time REAL NOT NULL,
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    n INTEGER NOT NULL,
    rows TEXT NOT NULL,
    input_shape TEXT NOT NULL,
    inputs BLOB NOT NULL,
    output_shape TEXT NOT NULL,
    outputs BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS prediction_ids (
    id TEXT PRIMARY KEY,
    batch INTEGER NOT NULL,
    row INTEGER NOT NULL
) WITHOUT ROWID;
CREATE VIEW IF NOT EXISTS predictions AS SELECT
    i.id AS id,
    json_extract(b.rows, '$.times[' || i.row || ']') AS time,
    b.model AS model,
    b.version AS version,
    coalesce(CASE WHEN json_type(b.rows, '$.at') IS NULL
        THEN substr(b.inputs, i.row * (length(b.inputs) / b.n) + 1, length(b.inputs) / b.n)
        ELSE substr(
            b.inputs, json_extract(b.rows, '$.at[' || i.row || ']') + 1,
            json_extract(b.rows, '$.at[' || (i.row + 1) || ']')
            - json_extract(b.rows, '$.at[' || i.row || ']'))
    END, x'') AS inputs,
    b.input_shape AS input_shape,
    coalesce(substr(b.outputs, i.row * (length(b.outputs) / b.n) + 1, length(b.outputs) / b.n),
             x'') AS outputs,
    b.output_shape AS output_shape,
    json_extract(b.rows, '$.labels[' || i.row || ']') AS label,
    json_extract(b.rows, '$.traces[' || i.row || ']') AS trace_id,
    b.first + i.row AS seq
FROM prediction_ids i JOIN prediction_batches b ON b.rowid = i.batch;
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY REFERENCES prediction_ids (id),
    label TEXT NOT NULL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_time ON feedback (time);
CREATE TABLE IF NOT EXISTS actuals (
    id TEXT NOT NULL REFERENCES prediction_ids (id),
    step INTEGER NOT NULL,
    value REAL NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (id, step)
);
CREATE INDEX IF NOT EXISTS actuals_time ON actuals (time);
"""
#: A log made with a row per prediction (before batches): its rows become batches of one,
#: and feedback and actuals move to tables that refer to the ids (each is renamed first and
#: copied once the new one exists: ``SQLiteStore._convert``).
_OLD_TABLES = ("feedback", "actuals")
_CONVERT = """
INSERT INTO prediction_batches
    (first, time, model, version, n, rows, input_shape, inputs, output_shape, outputs)
SELECT row_number() OVER (ORDER BY rowid) - 1, time, model, version, 1,
    json_object('ids', json_array(id), 'times', json_array(time), 'labels', json_array(label),
                'traces', json_array(trace_id)),
    input_shape, inputs, output_shape, outputs
FROM predictions ORDER BY rowid;
INSERT INTO prediction_ids (id, batch, row)
SELECT json_extract(rows, '$.ids[0]'), rowid, 0 FROM prediction_batches;
DROP TABLE predictions;
"""
#: A batch row (``records.Stored``'s fields in order) after those logged before it (``first``:
#: how many, over the file's life), so that the count is two b-tree descents, not a scan.
INSERT_BATCH = (
    "INSERT INTO prediction_batches (first, time, model, version, n, rows, input_shape, "
    "inputs, output_shape, outputs) VALUES (coalesce((SELECT first + n FROM "
    "prediction_batches ORDER BY rowid DESC LIMIT 1), 0), ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: The predictions logged: first + n of the newest batch less first of the oldest.
COUNT_SQL = (
    "SELECT coalesce((SELECT first + n FROM prediction_batches ORDER BY rowid DESC LIMIT 1) "
    "- (SELECT first FROM prediction_batches ORDER BY rowid LIMIT 1), 0)"
)
#: A batch's ids, from its JSON (``records.Stored``), each under the batch and its row.
INSERT_IDS = (
    "INSERT INTO prediction_ids (id, batch, row) SELECT value, ?, key "
    "FROM json_each(?, '$.ids') WHERE true ON CONFLICT (id) DO NOTHING"
)


class SQLiteStore(SQLStore):
    """A :class:`~predictionlog.store.Store` in one SQLite file (created with its folders)."""

    batch_ids = (
        "SELECT j.value FROM prediction_batches b, json_each(b.rows, '$.ids') j WHERE b.rowid = ?"
    )

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
            self._incremental_vacuum()  # before WAL mode: that writes the file's first page
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                logger.warning("SQLite prediction log %s is in %s mode, not WAL", self.path, mode)
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA secure_delete=FAST")
            self._conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self._page = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
            self.saturated(False)
            self._conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            with self._transaction() as conn:
                old = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'predictions'"
                ).fetchone()
                if old:
                    self._convert(conn)
                else:
                    _run(conn, _SCHEMA)
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    def _convert(self, conn: sqlite3.Connection) -> None:
        """A log with a row per prediction becomes one of batches, in the caller's transaction."""
        count = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
        logger.info("converting %s to batches (%d predictions)", self.path, count)
        present = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
        if "trace_id" not in present:  # made before tracing
            conn.execute("ALTER TABLE predictions ADD COLUMN trace_id TEXT")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        old = [table for table in _OLD_TABLES if table in tables]
        for table in old:
            conn.execute(f"DROP INDEX IF EXISTS {table}_time")
            conn.execute(f"ALTER TABLE {table} RENAME TO old_{table}")
        _run(conn, _SCHEMA.split("CREATE VIEW")[0])  # the batches' tables
        _run(conn, _CONVERT)
        _run(conn, _SCHEMA)
        for table in old:
            conn.execute(f"INSERT INTO {table} SELECT * FROM old_{table}")
            conn.execute(f"DROP TABLE old_{table}")

    def _insert(self, conn: sqlite3.Connection, batch: Stored) -> None:
        cursor = conn.execute(INSERT_BATCH, batch)
        conn.execute(INSERT_IDS, (cursor.lastrowid, batch.rows))

    def _incremental_vacuum(self) -> None:
        """Pages freed by retention can go back to the file system: set on a new file (with
        its page size), and converted (one VACUUM) on a file made without it."""
        assert self._conn is not None
        if self._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            return
        new = self._conn.execute("PRAGMA page_count").fetchone()[0] == 0
        if new:  # before anything else: the first write fixes it
            self._conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        self._conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        if not new:
            logger.info("converting %s to incremental vacuum (one VACUUM)", self.path)
            self._conn.execute("VACUUM")

    def _count(self, conn: sqlite3.Connection) -> int:
        return int(conn.execute(COUNT_SQL).fetchone()[0])

    def _live_bytes(self, conn: sqlite3.Connection, rows: int) -> int:
        """The pages in use (the file is this plus free pages not yet reclaimed)."""
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def reclaim(self, keep: int = 0) -> None:
        with self._connection() as conn:
            free = conn.execute("PRAGMA freelist_count").fetchone()[0]
            size = conn.execute("PRAGMA page_size").fetchone()[0]
            excess = free - keep // size
            if excess > 0:
                # a script steps the pragma to the end (one execute() frees a single page)
                conn.executescript(f"PRAGMA incremental_vacuum({int(excess)});")

    def saturated(self, busy: bool) -> None:
        with self._connection() as conn:
            wal = BUSY_WAL_BYTES if busy else WAL_BYTES
            conn.execute(f"PRAGMA wal_autocheckpoint={wal // self._page}")

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


def _run(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of ``script`` in the caller's transaction (``executescript`` would
    commit it first)."""
    for statement in script.split(";\n"):
        if statement.strip():
            conn.execute(statement)
