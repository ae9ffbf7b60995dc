"""Control calls (flush, stats) while the writer cannot commit: another process holds the
SQLite log's write lock. A call that timed out must not leave its late answer to be read as
the answer to the next call, and the writer must survive answering a connection that is gone.

Found by tests/endurance/test_locked_database.py: a flush that timed out during the lock
left its answer on the control connection; the next stats call read it (no "bytes": /metrics
answered 500), and the writer crashed answering a control connection closed meanwhile."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import numpy as np
import pytest

from predictionlog import Batch, PredictionLog, WriterProcess
from tests.support.paths import MODELS

pytestmark = pytest.mark.timeout(60)


def batch(prefix: str, n: int = 3) -> Batch:
    rng = np.random.default_rng(n)
    return Batch(
        "m", 1, 1_700_000_000.0, [f"{prefix}-{i}" for i in range(n)],
        rng.standard_normal((n, 30)).astype(np.float32),
        rng.random((n, 2)).astype(np.float32), [None] * n,
    )  # fmt: skip


@contextmanager
def locked(db: Path) -> Iterator[sqlite3.Connection]:
    """The write lock, held by this process (the writer is another one)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_answers_that_come_late_are_never_taken_for_the_next_ones(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    writer = WriterProcess(f"sqlite:///{db}", repository=MODELS)
    log = PredictionLog(writer.socket_path)
    try:
        log.record(batch("before"))
        assert log.flush()
        with locked(db):
            log.record(batch("during"))
            # the writer is stuck in its commit: both time out
            assert not log.flush(timeout=0.5)
            assert log.stats(timeout=0.3) is None
        # the lock is gone: every answer is the answer to its own call
        for _ in range(3):
            figures = log.stats(timeout=10)
            assert figures is not None and "bytes" in figures, figures
        assert log.flush(timeout=10)
        assert writer.process.poll() is None, "the writer crashed"
        figures = log.stats(timeout=10)
        assert figures is not None
        assert (figures["written"], figures["dropped"]) == (6, 0)
    finally:
        log.close()
        assert writer.stop() == 0
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone() == (6,)


def test_the_writer_survives_a_control_connection_closed_before_its_answer(
    tmp_path: Path,
) -> None:
    db = tmp_path / "log.db"
    writer = WriterProcess(f"sqlite:///{db}", repository=MODELS)
    try:
        gone = PredictionLog(writer.socket_path)
        with locked(db):
            gone.record(batch("gone"))
            assert not gone.flush(timeout=0.5)
            gone.close(timeout=0.2)  # its questions are still to be answered
        log = PredictionLog(writer.socket_path)
        log.record(batch("after"))
        assert log.flush(timeout=10)
        assert writer.process.poll() is None, "the writer crashed"
        log.close()
    finally:
        assert writer.stop() == 0
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone() == (6,)
