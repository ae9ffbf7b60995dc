"""The prediction log and feedback store (predictionlog/), on SQLite and a real PostgreSQL."""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

import lz4.block
import numpy as np
import pytest

from predictionlog import (
    Feedback,
    FeedbackConflict,
    PostgresStore,
    Prediction,
    Retention,
    SQLiteStore,
    Store,
    UnknownPrediction,
    open_store,
    redacted,
)
from predictionlog.records import decode_array, pack
from predictionlog.retention import Usage
from predictionlog.wire import Batch
from tests.support.paths import ROOT
from tests.support.postgres import PostgresServer

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


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "predictions.db"


# -- the stores (both backends) ----------------------------------------------------------


def fashion_image(seed: int) -> np.ndarray:
    """A Fashion-MNIST-like image: pixel values 0-255, half of them background (zero)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(1, 256, (28, 28)).astype(np.float32)
    pixels[rng.random((28, 28)) < 0.5] = 0
    return pixels


def test_large_arrays_are_stored_compressed_when_that_pays(store: Store) -> None:
    """Images go to the store as LZ4 blocks (a third of their bytes here) through both write
    paths, the writer's batches (each image packed by itself, at its offset) and
    ``write_predictions``, and read back exactly; noise does not compress and is stored as it
    is."""
    image = Prediction(
        "img", T0, "fashion-cnn", 1, fashion_image(0), np.ones(10, np.float32), "Bag"
    )
    noise = prediction("noise", shape=(28, 28))
    store.write_predictions([image, noise])
    images = np.stack([fashion_image(1), fashion_image(2), fashion_image(3)])
    sent = Batch("fashion-cnn", 1, T0, ["w0", "w1", "w2"], images, np.ones((3, 10)), ["Bag"] * 3)
    batch = sent.stored()
    assert batch.n == 3 and len(batch.inputs) < 0.5 * images.nbytes  # packed before the store
    offsets = json.loads(batch.rows)["at"]
    assert offsets[0] == 0 and offsets[-1] == len(batch.inputs) and len(offsets) == 4
    store.write_batches([batch])
    wanted = [(image.id, image.inputs), (noise.id, noise.inputs)]
    for want, inputs in [*wanted, *((f"w{i}", images[i]) for i in range(3))]:
        got = store.get_prediction(want)
        assert got is not None
        np.testing.assert_array_equal(got.inputs, inputs)
        assert got.inputs.dtype == np.float32 and got.inputs.shape == (28, 28)
    assert len(pack(image.inputs.astype("<f4").tobytes())) < 0.5 * image.inputs.nbytes
    raw = noise.inputs.astype("<f4").tobytes()
    assert pack(raw) == raw  # does not pay: as it is
    with pytest.raises(ValueError, match="neither"):
        decode_array(b"\xff" * 100, "[28, 28]")  # shorter than raw, and not LZ4 of it


def test_8_bit_images_are_stored_as_their_values_and_read_back_exactly(store: Store) -> None:
    """Inputs whose every value is an integer 0-255 are packed as bytes (LZ4 of 784, not of
    3,136 bytes); one value off that (a fraction, -0.0, 256, NaN) keeps the image's float32
    bytes. Every one reads back bit for bit, through both backends."""
    images = np.stack([fashion_image(seed) for seed in range(6)])
    images[1, 3, 4] = 0.5
    images[2, 0, 0] = -0.0
    images[3, 27, 27] = 256.0
    images[4, 10, 10] = np.nan
    ids = [f"p{i}" for i in range(6)]
    batch = Batch("fashion-cnn", 1, T0, ids, images, np.ones((6, 10)), ["Bag"] * 6).stored()
    at = json.loads(batch.rows)["at"]
    parts = [batch.inputs[a:b] for a, b in itertools.pairwise(at)]
    sizes = [len(lz4.block.decompress(part, uncompressed_size=3136)) for part in parts]
    assert sizes == [784, 3136, 3136, 3136, 3136, 784]
    assert sum(map(len, parts[::5])) < 0.6 * sum(map(len, parts[1:3]))  # about 370 vs 830
    store.write_batches([batch])
    for i, id_ in enumerate(ids):
        got = store.get_prediction(id_)
        assert got is not None and got.inputs.dtype == np.float32
        assert got.inputs.tobytes() == images[i].tobytes()  # bit for bit: -0.0 and NaN too
    with pytest.raises(ValueError, match="neither"):  # LZ4 of neither length
        decode_array(lz4.block.compress(b"\0" * 100, store_size=False), "[28, 28]")


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


def test_a_prediction_keeps_the_trace_id_of_its_request(store: Store) -> None:
    traced = Prediction(**{**vars(prediction("traced")), "trace_id": "ab" * 16})
    store.write_predictions([traced, prediction("untraced")])
    assert store.get_prediction("traced") == traced
    assert store.get_prediction("traced").trace_id == "ab" * 16  # type: ignore[union-attr]
    assert store.get_prediction("untraced").trace_id is None  # type: ignore[union-attr]
    store.record_feedback(Feedback("traced", "a", T0))
    assert [(p.trace_id, label) for p, label in store.labelled("m")] == [("ab" * 16, "a")]


#: The predictions table before trace ids, per backend (a log made by an older service).
OLD_PREDICTIONS = """CREATE TABLE predictions ({seq}id TEXT PRIMARY KEY, time {real} NOT NULL,
    model TEXT NOT NULL, version INTEGER NOT NULL, inputs {blob} NOT NULL,
    input_shape TEXT NOT NULL, outputs {blob} NOT NULL, output_shape TEXT NOT NULL, label TEXT)"""


def test_a_log_of_rows_before_batches_and_trace_ids_is_converted_when_opened(
    store_url: str,
) -> None:
    """A log from before trace ids and batches (a table with a row per prediction, feedback
    referring to it): its predictions, feedback and order are kept, and the keys hold."""
    old = prediction("old")
    older = prediction("older", time=T0 - 5)
    feedback = (
        "CREATE TABLE feedback (id TEXT PRIMARY KEY REFERENCES predictions (id), "
        "label TEXT NOT NULL, time {real} NOT NULL)"
    )
    values = [
        (p.id, p.time, p.model, p.version, p.inputs.tobytes(), "[4]", p.outputs.tobytes(), "[3]",
         p.label)
        for p in (old, older)
    ]  # fmt: skip
    if store_url.startswith("sqlite"):
        path = Path(store_url.removeprefix("sqlite://"))
        path.parent.mkdir(parents=True)
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(OLD_PREDICTIONS.format(seq="", real="REAL", blob="BLOB"))
            conn.executemany(f"INSERT INTO predictions VALUES ({', '.join('?' * 9)})", values)
            conn.execute(feedback.format(real="REAL"))
            conn.execute("INSERT INTO feedback VALUES ('old', 'b', 1.0)")
    else:
        import psycopg

        with psycopg.connect(store_url, autocommit=True) as conn:
            conn.execute(
                OLD_PREDICTIONS.format(
                    seq="seq BIGINT GENERATED ALWAYS AS IDENTITY, ",
                    real="DOUBLE PRECISION",
                    blob="BYTEA",
                )
            )
            conn.cursor().executemany(
                "INSERT INTO predictions (id, time, model, version, inputs, input_shape, "
                f"outputs, output_shape, label) VALUES ({', '.join(['%s'] * 9)})",
                values,
            )
            conn.execute(feedback.format(real="DOUBLE PRECISION"))
            conn.execute("INSERT INTO feedback VALUES ('old', 'b', 1.0)")
    for again in range(2):  # opening it again finds it converted
        with closing(open_store(store_url)) as store:
            assert store.get_prediction("old") == old  # trace_id None
            assert store.get_prediction("older") == older
            new = Prediction(**{**vars(prediction(f"new{again}")), "trace_id": "cd" * 16})
            store.write_predictions([new])
            assert store.get_prediction(new.id) == new
            assert store.count_predictions() == 3 + again
            assert store.usage().rows == 3 + again
            if not again:
                assert [(p.id, label) for p, label in store.labelled("m")] == [("old", "b")]
                with pytest.raises(FeedbackConflict):
                    store.record_feedback(Feedback("old", "c", T0))
            else:  # in insertion order, not by time: "old" was inserted first
                assert store.prune_oldest(1) == 1 and store.get_prediction("old") is None
                assert store.labelled("m") == []  # its feedback went with it
    if store_url.startswith("sqlite"):
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_everything_survives_a_restart_and_other_processes_see_it(store_url: str) -> None:
    rows = [prediction(f"p{i}", time=T0 + i, shape=(i + 1,)) for i in range(10)]
    with closing(open_store(store_url)) as first:
        first.write_predictions(rows[:6])
        first.record_feedback(Feedback("p1", "a", T0))
    with closing(open_store(store_url)) as second:
        second.write_predictions(rows[6:])

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

        own = [open_store(store_url) for _ in range(3)]  # a store per thread
        shared = open_store(store_url)  # one store used by two threads
        start = threading.Barrier(6)
        errors: list[BaseException] = []

        def via_own_store(index: int) -> None:
            start.wait()
            for i in range(0, per_writer, 7):
                upper = min(i + 7, per_writer)
                own[index].write_predictions(
                    [prediction(f"own{index}-{j}") for j in range(i, upper)]
                )

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

        threads = [threading.Thread(target=via_own_store, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=via_shared_store, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        process.stdin.write("go\n")
        process.stdin.flush()
        start.wait()
        for thread in threads:
            thread.join(30)
        for store in own:
            store.close()
        assert process.stdout.readline().strip() == "done"
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.communicate()  # reaps it and closes the pipes
    shared.close()

    assert errors == []
    with closing(open_store(store_url)) as check:
        assert check.count_predictions() == 6 * per_writer
        for name in ("own0", "own1", "own2", "shared0", "shared1", "proc"):
            for i in (0, per_writer // 2, per_writer - 1):
                assert check.get_prediction(f"{name}-{i}") is not None, f"{name}-{i}"
        got = check.get_prediction(f"proc-{per_writer - 1}")
        assert got is not None
        np.testing.assert_array_equal(got.inputs, np.full(5, per_writer - 1))


# -- retention (both backends) ---------------------------------------------------------


def test_retention_prunes_the_oldest_by_age_and_rows_with_their_feedback(store: Store) -> None:
    rows = [prediction(f"p{i}", time=T0 + i) for i in range(50)]
    store.write_predictions(rows)
    store.record_feedback(Feedback("p3", "a", T0))
    store.record_feedback(Feedback("p40", "b", T0))
    assert store.usage().rows == 50 and store.usage().oldest == T0
    assert store.usage().bytes > 0

    by_age = Retention(max_age_s=100.0, max_rows=None, max_bytes=None, batch=7)
    now = T0 + 100 + 10  # everything before T0 + 10 is too old
    removed = [by_age.step(store, now=now) for _ in range(4)]
    assert removed == [7, 3, 0, 0]  # in batches of at most 7, oldest first, then nothing
    assert store.usage().rows == 40 and store.usage().oldest == T0 + 10
    assert store.get_prediction("p9") is None and store.get_prediction("p10") is not None
    assert [p.id for p, _ in store.labelled("m")] == ["p40"]  # p3's feedback went with it

    by_rows = Retention(max_age_s=None, max_rows=25, max_bytes=None)
    assert by_rows.step(store, now=now) == 15 and by_rows.step(store, now=now) == 0
    assert store.usage().rows == 25 and store.get_prediction("p25") is not None
    with pytest.raises(UnknownPrediction):
        store.record_feedback(Feedback("p24", "a", T0))  # pruned: feedback cannot join


def test_pruning_offers_a_pause_between_batches_of_one_transaction(store: Store) -> None:
    """The writer hands its pause to pruning as to inserts: called after every batch (here
    one prediction each: ``write_predictions``); what is removed is the same as in one go,
    feedback included."""
    store.write_predictions([prediction(f"p{i}", time=T0 + i) for i in range(30)])
    for i in (2, 19, 20):
        store.record_feedback(Feedback(f"p{i}", "a", T0))
    pauses: list[int] = []
    assert store.prune_oldest(20, pause=lambda: pauses.append(1)) == 20
    assert len(pauses) == 20
    assert store.usage().rows == 10 and store.get_prediction("p19") is None
    assert [p.id for p, _ in store.labelled("m")] == ["p20"]
    old = Retention(max_age_s=100.0, max_rows=None, max_bytes=None, batch=64)
    pauses.clear()
    assert old.step(store, now=T0 + 100 + 25, pause=lambda: pauses.append(1)) == 5
    assert len(pauses) == 5 and store.get_prediction("p25") is not None


def test_retention_by_bytes_keeps_the_newest_within_the_bound(store: Store) -> None:
    for start in range(0, 3000, 500):
        store.write_predictions(
            [prediction(f"p{i}", time=T0 + i, shape=(64,)) for i in range(start, start + 500)]
        )
    full = store.usage()
    bound = full.bytes // 3
    retention = Retention(max_age_s=None, max_rows=None, max_bytes=bound, batch=10_000)
    assert retention.step(store) > 0
    for _ in range(3):  # a step prunes what the mean row size says; pages round it, so the
        retention.step(store)  # writer's next steps finish what one estimate left
    after = store.usage()
    assert after.bytes <= retention.high * bound, (full, after)
    assert after.bytes >= 0.5 * bound  # pruned to the low mark, not to nothing
    assert store.get_prediction("p2999") is not None and store.get_prediction("p0") is None
    assert retention.step(store) == 0  # within the bound: nothing more


def test_sqlite_gives_pruned_space_back_to_the_file_system(sqlite_path: Path) -> None:
    with SQLiteStore(sqlite_path) as store:
        store.write_predictions([prediction(f"p{i}", shape=(256,)) for i in range(4000)])
        big = sqlite_path.stat().st_size
        assert Retention(None, 400, None, batch=100_000).step(store) == 3600
        with sqlite3.connect(sqlite_path) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        assert sqlite_path.stat().st_size < big / 4, (big, sqlite_path.stat().st_size)
        assert store.usage().rows == 400


def test_a_full_sqlite_log_reuses_what_pruning_frees_and_returns_only_the_rest(
    sqlite_path: Path,
) -> None:
    """At its byte bound the pages a burst frees are what the next rows fill: kept (up to
    the slack between the marks), not given back and taken again; beyond it, given back."""

    def pages(conn: sqlite3.Connection) -> tuple[int, int]:
        return (
            conn.execute("PRAGMA page_count").fetchone()[0],
            conn.execute("PRAGMA freelist_count").fetchone()[0],
        )

    with SQLiteStore(sqlite_path) as store, closing(sqlite3.connect(sqlite_path)) as conn:
        store.write_predictions([prediction(f"p{i}", shape=(256,)) for i in range(2000)])
        bound = store.usage().bytes
        retention = Retention(max_age_s=None, max_rows=None, max_bytes=bound, batch=100_000)
        store.write_predictions([prediction(f"q{i}", shape=(256,)) for i in range(200)])
        assert retention.step(store) > 200  # past the high mark: down to the low one
        total, free = pages(conn)
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        # near the low mark (85 %): whole pages round it up
        assert 0 < free * size <= retention.slack() and store.usage().bytes <= 0.9 * bound
        store.write_predictions([prediction(f"r{i}", shape=(256,)) for i in range(150)])
        grown, left = pages(conn)
        assert grown == total and left < free  # the new rows went into the freed pages

        small = Retention(max_age_s=None, max_rows=None, max_bytes=bound // 4, batch=100_000)
        assert small.step(store) > 0  # a lower bound: what is freed beyond the slack goes back
        shrunk, free = pages(conn)
        assert shrunk < total / 2 and free * size <= small.slack()


def test_an_old_sqlite_file_is_converted_to_incremental_vacuum(sqlite_path: Path) -> None:
    with sqlite3.connect(sqlite_path) as conn:  # a log made before retention existed
        conn.execute("CREATE TABLE predictions (id TEXT PRIMARY KEY)")
        conn.execute("DROP TABLE predictions")
    conn.close()
    with SQLiteStore(sqlite_path) as store:
        store.write_predictions([prediction("p0")])
    with sqlite3.connect(sqlite_path) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    conn.close()


# -- SQLite specifics --------------------------------------------------------------------


def test_sqlite_uses_wal_and_stores_raw_little_endian_float32(sqlite_path: Path) -> None:
    row = prediction("image", shape=(28, 28))  # noise: stored as it is (see records.pack)
    pixels = fashion_image(2)
    packed = Prediction("packed", T0, "m", 1, pixels / 255, np.ones(3, np.float32), "a")
    eight_bit = Prediction("8-bit", T0, "m", 1, pixels, np.ones(3, np.float32), "a")
    with SQLiteStore(sqlite_path) as store:
        store.write_predictions([row, packed, eight_bit])
    with sqlite3.connect(sqlite_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        inputs, shape, outputs, output_shape = conn.execute(
            "SELECT inputs, input_shape, outputs, output_shape FROM predictions WHERE id = 'image'"
        ).fetchone()
        (lz4_block,) = conn.execute("SELECT inputs FROM predictions WHERE id = 'packed'").fetchone()
        (lz4_bytes,) = conn.execute("SELECT inputs FROM predictions WHERE id = '8-bit'").fetchone()
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert inputs == row.inputs.astype("<f4").tobytes() and json.loads(shape) == [28, 28]
    assert outputs == row.outputs.astype("<f4").tobytes() and output_shape == "[3]"
    # an image: an LZ4 block of the same bytes, which any LZ4 reader decodes given the size
    raw = packed.inputs.astype("<f4").tobytes()
    assert len(lz4_block) < len(raw) == 28 * 28 * 4
    assert lz4.block.decompress(lz4_block, uncompressed_size=len(raw)) == raw
    # pixel values 0-255: an LZ4 block of them as bytes (a quarter of the float32 size)
    assert (
        lz4.block.decompress(lz4_bytes, uncompressed_size=len(raw)) == pixels.astype("u1").tobytes()
    )
    assert {"predictions", "feedback"} <= tables
    assert "predictions_model_time" not in tables  # dropped: inserts cost a fifth less
    with sqlite3.connect(sqlite_path) as conn:  # 4 KB pages (the module docstring: why)
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


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


def test_urls_are_redacted_for_logs_and_reports() -> None:
    assert (
        redacted("postgresql://nnserve:s3cr:et@db:5432/log")
        == "postgresql://nnserve:***@db:5432/log"
    )
    for kept in ("postgresql://nnserve@db/log", "postgresql://db/log", "sqlite:///x.db", "x.db"):
        assert redacted(kept) == kept


def test_bad_arguments_are_refused(sqlite_path: Path) -> None:
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


class _Counted:
    """A store of ``rows`` predictions of 100 bytes each (what Retention sees of one)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def usage(self) -> Usage:
        return Usage(self.rows, self.rows * 100, T0)

    def prune_oldest(
        self, n: int, older_than: float | None = None, pause: Callable[[], object] | None = None
    ) -> int:
        removed = min(n, self.rows)
        self.rows -= removed
        return removed

    def reclaim(self, keep: int = 0) -> None:
        pass


def test_a_full_log_is_pruned_in_bursts_down_to_the_low_mark() -> None:
    """Past the high mark (95 %) pruning continues step after step down to the low mark
    (85 %), then rests until the high mark is passed again: not a few rows per commit."""
    store = _Counted(rows=960)  # 96 % of a 100,000-byte bound
    retention = Retention(max_age_s=None, max_rows=None, max_bytes=100_000, batch=30)
    steps = []
    while removed := retention.step(store):
        steps.append(removed)
        store.rows += 5  # commits go on meanwhile
    assert store.rows * 100 <= 0.85 * 100_000 + 5 * 100 and len(steps) > 1
    for _ in range(18):  # growing from the low mark towards the high one: no pruning
        store.rows += 5
        assert retention.step(store) == 0
    store.rows += 10  # past 95 %: the next burst
    assert retention.step(store) > 0


def test_room_is_made_before_a_commit_that_would_pass_a_bound() -> None:
    """Only what the coming commit would take past the bound itself; the marks are left to
    the steps between commits."""
    store = _Counted(rows=900)  # 90 % of a 100,000-byte bound: below the high mark
    retention = Retention(max_age_s=None, max_rows=None, max_bytes=100_000, batch=30)
    assert retention.make_room(store, store.usage(), rows=50, nbytes=5_000) == 0
    assert retention.make_room(store, store.usage(), rows=130, nbytes=13_000) == 30
    assert store.rows == 870 and (store.rows + 130) * 100 <= 100_000
    by_rows = Retention(max_age_s=None, max_rows=1000, max_bytes=None)
    assert by_rows.make_room(store, store.usage(), rows=200, nbytes=0) == 70


def test_measuring_a_sqlite_log_reads_its_two_ends_not_every_row(sqlite_path: Path) -> None:
    """The writer measures the log every second: the count is the newest batch's ``first +
    n`` less the oldest one's ``first``, two b-tree descents; a scan of the batches (or a
    query asking for min() and max() at once) reads every one (42 ms every second on an 84
    MB log). Counted in SQLite virtual-machine steps."""
    steps: dict[int, int] = {}
    with SQLiteStore(sqlite_path) as store:
        for total in (100, 5_000):
            have = store.usage().rows
            store.write_predictions([prediction(f"p{i}", shape=(4,)) for i in range(have, total)])
            count = [0]

            def tick(count: list[int] = count) -> int:
                count[0] += 1
                return 0

            with store._connection() as conn:
                conn.set_progress_handler(tick, 10)
            assert store.usage().rows == total
            with store._connection() as conn:
                conn.set_progress_handler(None, 0)
            steps[total] = count[0]
    assert max(steps.values()) < 20, steps  # a scan of 5,000 rows: about 3,500


def test_sqlite_checkpoints_in_larger_steps_while_the_service_is_saturated(
    sqlite_path: Path,
) -> None:
    """1 MB of WAL per checkpoint normally (each is one uninterrupted copy), 4 MB when the
    writer says requests queue anyway (each checkpoint waits for two fsyncs)."""
    with SQLiteStore(sqlite_path) as store:
        pages = store._conn.execute  # type: ignore[union-attr]
        assert pages("PRAGMA wal_autocheckpoint").fetchone()[0] == (1 << 20) // 4096
        store.saturated(True)
        assert pages("PRAGMA wal_autocheckpoint").fetchone()[0] == (4 << 20) // 4096
        store.saturated(False)
        assert pages("PRAGMA wal_autocheckpoint").fetchone()[0] == (1 << 20) // 4096
