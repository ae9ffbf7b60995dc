"""The prediction log and feedback store (predictionlog/), on SQLite and a real PostgreSQL."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from predictionlog import (
    Feedback,
    FeedbackConflict,
    PostgresStore,
    Prediction,
    PredictionLog,
    SQLiteStore,
    Store,
    UnknownPrediction,
    open_store,
)
from tests.support.paths import ROOT
from tests.support.postgres import PostgresServer, require_psycopg, running_postgres

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0


def prediction(
    id: str,
    *,
    model: str = "m",
    version: int = 1,
    time: float = T0,
    shape: tuple[int, ...] = (4,),
    label: str | None = "a",
) -> Prediction:
    """A prediction with inputs and outputs derived from its id (so they can be re-derived)."""
    rng = np.random.default_rng(sum(id.encode()))
    return Prediction(
        id=id,
        time=time,
        model=model,
        version=version,
        inputs=rng.standard_normal(shape).astype(np.float32),
        outputs=rng.random(3).astype(np.float32),
        label=label,
    )


def ids(rows: Sequence[Prediction]) -> list[str]:
    return [row.id for row in rows]


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    require_psycopg()
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty store, once per backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'log' / 'predictions.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "predictions.db"


# -- the stores (both backends) ----------------------------------------------------------


def test_round_trip_gives_back_exact_arrays_of_any_shape(store: Store) -> None:
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, 3.4028235e38], np.float32)
    rows = [
        prediction("tabular", shape=(30,)),
        prediction("image", shape=(28, 28), model="fashion-cnn", version=3),
        prediction("sequence", shape=(17, 12), label=None),
        prediction("scalar", shape=()),
        prediction("empty", shape=(0, 12)),
        Prediction("special", T0 + 0.123456789, "m", 2, special, special[::-1].copy(), "b"),
        # big-endian and non-contiguous: stored as little-endian float32 in C order all the same
        Prediction(
            "layout",
            T0,
            "m",
            1,
            np.arange(6, dtype=">f4").reshape(2, 3).T,
            np.arange(3, dtype=np.float64),
            "c",
        ),
    ]
    store.write_predictions(rows)
    for row in rows:
        got = store.get_prediction(row.id)
        assert got is not None
        assert got == row
        assert got.inputs.dtype == np.float32 and got.outputs.dtype == np.float32
        assert got.inputs.shape == row.inputs.shape
        np.testing.assert_array_equal(got.inputs, row.inputs)
        assert got.time == row.time and got.version == row.version and got.label == row.label
    layout = store.get_prediction("layout")
    assert layout is not None
    np.testing.assert_array_equal(layout.inputs, [[0, 3], [1, 4], [2, 5]])
    assert store.get_prediction("never-logged") is None
    assert store.count_predictions() == len(rows)
    assert store.count_predictions("fashion-cnn") == 1
    assert store.count_predictions("nope") == 0


def test_rewriting_an_id_is_ignored(store: Store) -> None:
    first = [prediction(f"p{i}") for i in range(5)]
    store.write_predictions(first)
    store.write_predictions(first)  # a retried batch
    # the same id with other content (and a duplicate inside one batch) changes nothing
    changed = prediction("p0", model="m", version=9, label="z", shape=(2,))
    store.write_predictions([changed, prediction("p5"), prediction("p5")])
    store.write_predictions([])
    assert store.count_predictions() == 6
    assert store.get_prediction("p0") == first[0]


def test_feedback_is_stored_once_and_conflicts_are_refused(store: Store) -> None:
    store.write_predictions([prediction("p1"), prediction("p2")])
    assert store.record_feedback(Feedback("p1", "cat", T0 + 5)) is True
    assert store.record_feedback(Feedback("p1", "cat", T0 + 9)) is False  # idempotent
    with pytest.raises(FeedbackConflict, match="cat"):
        store.record_feedback(Feedback("p1", "dog", T0 + 9))
    with pytest.raises(UnknownPrediction, match="ghost"):
        store.record_feedback(Feedback("ghost", "cat", T0))
    # neither the conflict nor the unknown id stored anything
    assert [(p.id, label) for p, label in store.labelled("m")] == [("p1", "cat")]


def test_labelled_joins_feedback_and_orders_oldest_first(store: Store) -> None:
    store.write_predictions(
        [
            prediction("late", time=T0 + 30, version=2),
            prediction("early", time=T0 + 10, version=1),
            prediction("middle", time=T0 + 20, version=2, label="b"),
            prediction("unlabelled", time=T0 + 15),
            prediction("other-model", time=T0 + 1, model="other"),
        ]
    )
    store.write_predictions([prediction("tie-2", time=T0 + 20)])  # same time, logged later
    for id, label in [
        ("late", "x"),
        ("tie-2", "w"),
        ("middle", "y"),
        ("early", "z"),
        ("other-model", "q"),
    ]:
        assert store.record_feedback(Feedback(id, label, T0 + 100))
    got = store.labelled("m")
    assert [(p.id, p.version, label) for p, label in got] == [
        ("early", 1, "z"),
        ("middle", 2, "y"),
        ("tie-2", 1, "w"),
        ("late", 2, "x"),
    ]
    assert got[1][0] == prediction("middle", time=T0 + 20, version=2, label="b")  # whole row
    assert [(p.id, label) for p, label in store.labelled("other")] == [("other-model", "q")]
    assert store.labelled("unknown-model") == []


def test_everything_survives_a_restart_and_other_processes_see_it(store_url: str) -> None:
    rows = [prediction(f"p{i}", time=T0 + i, shape=(i + 1,)) for i in range(10)]
    with closing(open_store(store_url)) as first:
        first.write_predictions(rows[:6])
        first.record_feedback(Feedback("p1", "a", T0))
    log = PredictionLog(open_store(store_url), batch_size=3)
    log.record(rows[6:])
    log.close()
    assert log.written == 4 and log.dropped == 0

    reopened = open_store(store_url)
    try:
        assert reopened.count_predictions() == 10
        assert [reopened.get_prediction(row.id) for row in rows] == rows
        assert [(p.id, label) for p, label in reopened.labelled("m")] == [("p1", "a")]
    finally:
        reopened.close()

    script = (
        "import json, sys; from predictionlog import open_store\n"
        "store = open_store(sys.argv[1])\n"
        "p = store.get_prediction('p9')\n"
        "print(json.dumps([store.count_predictions('m'), p.inputs.shape, p.inputs.tolist()]))\n"
    )
    reader = subprocess.run(
        [sys.executable, "-c", script, store_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    count, shape, inputs = json.loads(reader.stdout)
    assert (count, shape) == (10, [10])
    np.testing.assert_array_equal(np.array(inputs, np.float32), rows[9].inputs)


WRITER = """
import sys
import numpy as np
from predictionlog import Prediction, open_store
url, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = open_store(url)
print("ready", flush=True)
sys.stdin.readline()
for start in range(0, n, 10):
    store.write_predictions([
        Prediction(f"{prefix}-{i}", float(i), "m", 1, np.full(5, i, np.float32),
                   np.zeros(3, np.float32), "a")
        for i in range(start, min(start + 10, n))
    ])
store.close()
print("done", flush=True)
"""


def test_concurrent_writers_land_every_row_exactly_once(store_url: str) -> None:
    per_writer = 300
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER, store_url, "proc", str(per_writer)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().strip() == "ready"

        logs = [PredictionLog(open_store(store_url), batch_size=16) for _ in range(3)]
        shared = open_store(store_url)  # one store used by two threads directly
        start = threading.Barrier(6)
        errors: list[BaseException] = []

        def via_log(index: int) -> None:
            start.wait()
            for i in range(0, per_writer, 7):
                upper = min(i + 7, per_writer)
                logs[index].record([prediction(f"log{index}-{j}") for j in range(i, upper)])

        def via_shared_store(index: int) -> None:
            start.wait()
            try:
                for i in range(0, per_writer, 25):
                    upper = min(i + 25, per_writer)
                    shared.write_predictions(
                        [prediction(f"shared{index}-{j}") for j in range(i, upper)]
                    )
            except BaseException as exc:
                errors.append(exc)
                raise

        threads = [threading.Thread(target=via_log, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=via_shared_store, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        process.stdin.write("go\n")
        process.stdin.flush()
        start.wait()
        for thread in threads:
            thread.join(30)
        for log in logs:
            log.close()
        assert process.stdout.readline().strip() == "done"
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.communicate()  # reaps it and closes the pipes
    shared.close()

    assert errors == []
    assert [(log.written, log.dropped) for log in logs] == [(per_writer, 0)] * 3
    with closing(open_store(store_url)) as check:
        assert check.count_predictions() == 6 * per_writer
        for name in ("log0", "log1", "log2", "shared0", "shared1", "proc"):
            for i in (0, per_writer // 2, per_writer - 1):
                assert check.get_prediction(f"{name}-{i}") is not None, f"{name}-{i}"
        got = check.get_prediction(f"proc-{per_writer - 1}")
        assert got is not None
        np.testing.assert_array_equal(got.inputs, np.full(5, per_writer - 1))


def test_prediction_log_over_a_store_flushes_and_closes(store_url: str) -> None:
    written: list[str] = []
    log = PredictionLog(
        open_store(store_url), batch_size=50, on_written=lambda rows: written.extend(ids(rows))
    )
    rows = [prediction(f"p{i}", time=T0 + i) for i in range(500)]
    for i in range(0, 500, 20):
        log.record(rows[i : i + 20])
    assert log.flush(timeout=20)
    assert log.written == 500 and written == ids(rows)  # on_written saw them, in order
    log.record([prediction("after-flush")])
    log.close()
    log.close()  # idempotent
    assert log.written == 501 and log.dropped == 0
    with closing(open_store(store_url)) as check:
        assert check.count_predictions() == 501


# -- SQLite specifics --------------------------------------------------------------------


def test_sqlite_uses_wal_and_stores_raw_little_endian_float32(sqlite_path: Path) -> None:
    row = prediction("image", shape=(28, 28))
    with SQLiteStore(sqlite_path) as store:
        store.write_predictions([row])
    with sqlite3.connect(sqlite_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        inputs, shape, outputs, output_shape = conn.execute(
            "SELECT inputs, input_shape, outputs, output_shape FROM predictions"
        ).fetchone()
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert inputs == row.inputs.astype("<f4").tobytes() and json.loads(shape) == [28, 28]
    assert outputs == row.outputs.astype("<f4").tobytes() and output_shape == "[3]"
    assert {"predictions", "feedback", "predictions_model_time"} <= tables


def test_open_store_understands_urls_and_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cases = {
        f"sqlite://{tmp_path}/abs/a.db": tmp_path / "abs" / "a.db",
        "sqlite:rel/b.db": tmp_path / "rel" / "b.db",
        str(tmp_path / "plain" / "deep" / "c.db"): tmp_path / "plain" / "deep" / "c.db",
        "relative.db": tmp_path / "relative.db",
    }
    for url, path in cases.items():
        store = open_store(url)
        try:
            assert isinstance(store, SQLiteStore)
            store.write_predictions([prediction("x")])
        finally:
            store.close()
        assert path.is_file(), url
    with closing(open_store(tmp_path / "pathlike.db")) as store:
        assert isinstance(store, SQLiteStore)

    for bad in ["", "sqlite:", "sqlite://host/x.db", "mysql://u@h/db", "sqlite:x.db?mode=ro"]:
        with pytest.raises(ValueError) as info:
            open_store(bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="folder"):
        open_store(str(tmp_path))


class BlockingStore:
    """A SQLite store whose writes wait until ``release`` is set (a slow disk, on demand)."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()

    def write_predictions(self, rows: Sequence[Prediction]) -> None:
        self.entered.set()
        assert self.release.wait(30)
        self.inner.write_predictions(rows)

    def get_prediction(self, id: str) -> Prediction | None:
        return self.inner.get_prediction(id)

    def record_feedback(self, feedback: Feedback) -> bool:
        return self.inner.record_feedback(feedback)

    def labelled(self, model: str) -> list[tuple[Prediction, str]]:
        return self.inner.labelled(model)

    def count_predictions(self, model: str | None = None) -> int:
        return self.inner.count_predictions(model)

    def close(self) -> None:
        self.inner.close()


def test_a_full_queue_drops_counts_and_reports_but_never_blocks(sqlite_path: Path) -> None:
    store = BlockingStore(SQLiteStore(sqlite_path))
    reported: list[int] = []
    log = PredictionLog(store, max_queue=4, batch_size=2, on_drop=reported.append)
    rows = [prediction(f"p{i}") for i in range(25)]
    log.record(rows[:1])
    assert store.entered.wait(10)  # the writer holds p0 and is stuck in the store
    began = time.perf_counter()
    kept: list[str] = ["p0"]
    for row in rows[1:]:
        before = sum(reported)
        log.record([row])
        if sum(reported) == before:
            kept.append(row.id)
    elapsed = time.perf_counter() - began
    assert elapsed < 1.0  # never waited for the store
    assert kept == ["p0", "p1", "p2", "p3", "p4"]  # the queue holds 4 more
    assert log.dropped == 20 and sum(reported) == 20
    assert log.flush(timeout=0.05) is False  # still stuck
    store.release.set()
    assert log.flush(timeout=10)
    log.close()
    assert log.written == 5 and log.written + log.dropped == len(rows)
    with SQLiteStore(sqlite_path) as check:
        assert check.count_predictions() == 5
        assert [check.get_prediction(id) is not None for id in ids(rows)] == [
            row.id in kept for row in rows
        ]
    log.record([prediction("too-late")])  # after close: counted and reported, not lost silently
    assert log.dropped == 21 and reported[-1] == 1


class FailingStore(BlockingStore):
    """Fails the first ``failures`` writes, like a database that is briefly down."""

    def __init__(self, inner: SQLiteStore, failures: int) -> None:
        super().__init__(inner)
        self.release.set()
        self.failures = failures

    def write_predictions(self, rows: Sequence[Prediction]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        super().write_predictions(rows)


def test_a_store_error_is_logged_counted_and_the_writer_carries_on(
    sqlite_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_callback(rows: Sequence[Prediction]) -> None:
        raise ZeroDivisionError  # a broken callback must not stop the writer either

    reported: list[int] = []
    log = PredictionLog(
        FailingStore(SQLiteStore(sqlite_path), failures=1),
        batch_size=10,
        on_drop=reported.append,
        on_written=broken_callback,
    )
    with caplog.at_level(logging.WARNING, logger="nnserve.predictionlog"):
        log.record([prediction(f"a{i}") for i in range(3)])
        assert log.flush(timeout=10)
        log.record([prediction(f"b{i}") for i in range(4)])
        log.close()
    assert (log.written, log.dropped, reported) == (4, 3, [3])
    messages = [record.getMessage() for record in caplog.records]
    assert any("3 predictions" in m and "failed" in m for m in messages), messages
    assert any("on_written" in m for m in messages), messages
    with SQLiteStore(sqlite_path) as check:
        assert check.count_predictions() == 4 and check.get_prediction("a0") is None


def sampled_ids(path: Path, sample: float, seed: int | None) -> list[str]:
    rows = [prediction(f"p{i}") for i in range(2000)]
    log = PredictionLog(SQLiteStore(path), sample=sample, seed=seed)
    for i in range(0, len(rows), 50):
        log.record(rows[i : i + 50])
    log.close()
    assert log.dropped == 0
    with sqlite3.connect(path) as conn:
        found = [id for (id,) in conn.execute("SELECT id FROM predictions ORDER BY rowid")]
    conn.close()
    assert len(found) == log.written
    return found


def test_sampling_keeps_the_requested_share_deterministically(tmp_path: Path) -> None:
    assert sampled_ids(tmp_path / "none.db", 0.0, None) == []
    assert len(sampled_ids(tmp_path / "all.db", 1.0, None)) == 2000
    half = sampled_ids(tmp_path / "half-1.db", 0.5, 7)
    assert 850 <= len(half) <= 1150  # binomial(2000, 0.5): 6+ standard deviations
    assert sampled_ids(tmp_path / "half-2.db", 0.5, 7) == half  # same seed, same rows
    assert sampled_ids(tmp_path / "half-3.db", 0.5, 8) != half


def test_close_commits_everything_recorded(sqlite_path: Path) -> None:
    log = PredictionLog(SQLiteStore(sqlite_path), batch_size=7)
    total = 0
    for i in range(100):
        log.record([prediction(f"p{i}-{j}") for j in range(i % 5)])
        total += i % 5
    log.close()  # no flush first: close alone must not lose anything
    assert log.written == total and log.dropped == 0
    with SQLiteStore(sqlite_path) as check:
        assert check.count_predictions() == total


def test_bad_arguments_are_refused(sqlite_path: Path) -> None:
    store = SQLiteStore(sqlite_path)
    for kwargs in [{"sample": 1.5}, {"sample": -0.1}, {"max_queue": 0}, {"batch_size": 0}]:
        with pytest.raises(ValueError):
            PredictionLog(store, **kwargs)  # type: ignore[arg-type]
    store.close()
    with pytest.raises(ValueError, match="160"):
        prediction("x" * 161)
    with pytest.raises(ValueError):
        Feedback("", "a", T0)
    assert prediction("x" * 160).id == "x" * 160


def test_the_package_imports_nothing_heavy() -> None:
    script = (
        "import sys, predictionlog\n"
        "heavy = ['torch', 'fastapi', 'service', 'training', 'psycopg', 'onnxruntime']\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout.strip() == "[]"


# -- PostgreSQL specifics ----------------------------------------------------------------


def test_postgres_urls_open_a_postgres_store(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    for variant in [url, url.replace("postgresql://", "postgres://", 1)]:
        store = open_store(variant)
        try:
            assert isinstance(store, PostgresStore)
            assert "postgres@" not in repr(store)  # a URL may hold a password
            store.write_predictions([prediction("p")])
            assert store.count_predictions() == 1
        finally:
            store.close()


def test_postgres_store_reconnects_after_the_connection_drops(
    postgres_server: PostgresServer,
) -> None:
    import psycopg

    url = postgres_server.new_database()
    with PostgresStore(url) as store:
        store.write_predictions([prediction("before")])
        with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (url.rsplit("/", 1)[1],),
            )
        with pytest.raises(psycopg.OperationalError):  # the write in flight is lost ...
            store.write_predictions([prediction("lost")])
        store.write_predictions([prediction("after")])  # ... the next one reconnects
        assert store.count_predictions() == 2
