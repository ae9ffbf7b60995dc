"""The log writer process and the service's connection to it: the wire format, everything
sent is committed once, flush, SIGTERM, kill -9, a full disk, a writer that falls behind."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from predictionlog import Batch, PredictionLog, Retention, WriterProcess, open_store
from predictionlog.counters import Counters
from predictionlog.pacing import Poll
from predictionlog.wire import MAX_MESSAGE, decode, encode, merge
from predictionlog.writer import Writer
from tests.support.paths import MODELS, ROOT
from tests.support.postgres import require_psycopg, running_postgres

pytestmark = pytest.mark.timeout(60)
T0 = 1_700_000_000.0


def batch(prefix: str, n: int = 3, width: int = 30, model: str = "m") -> Batch:
    rng = np.random.default_rng(len(prefix) + n)
    return Batch(
        model,
        1,
        T0,
        [f"{prefix}-{i}" for i in range(n)],
        rng.standard_normal((n, width)).astype(np.float32),
        rng.random((n, 2)).astype(np.float32),
        ["a" if i % 2 else None for i in range(n)],
    )


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[WriterProcess]:
    process = WriterProcess(f"sqlite:///{tmp_path / 'log.db'}", repository=MODELS)
    yield process
    process.stop()


def stored(tmp_path: Path) -> list[str]:
    with closing(sqlite3.connect(tmp_path / "log.db")) as conn:
        return [i for (i,) in conn.execute("SELECT id FROM predictions ORDER BY seq")]


# -- the wire format -----------------------------------------------------------------------
def test_a_batch_goes_over_the_wire_exactly() -> None:
    sent = batch("p", n=5)
    (message,) = encode(sent)
    got = decode(message)
    assert (got.model, got.version, got.time, list(got.ids), list(got.labels)) == (
        "m", 1, T0, list(sent.ids), list(sent.labels)
    )  # fmt: skip
    np.testing.assert_array_equal(got.inputs, sent.inputs)
    np.testing.assert_array_equal(got.outputs, sent.outputs)
    stored = got.stored()
    assert (stored.model, stored.version, stored.n, stored.time) == ("m", 1, 5, T0)
    rows = json.loads(stored.rows)
    assert rows["ids"][1] == "p-1" and rows["times"][1] == T0 and rows["labels"][1] == "a"
    assert "at" not in rows and "traces" not in rows  # rows of one size, none traced
    assert np.frombuffer(stored.inputs, "<f4").reshape(5, -1).tolist() == sent.inputs.tolist()


def test_8_bit_images_go_over_the_wire_as_bytes_and_are_stored_alike() -> None:
    """Inputs of 1 KB or more whose values are all integers 0-255 go as bytes (a quarter of
    the socket's bytes); the writer stores exactly what it would have from float32."""
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (4, 28, 28)).astype(np.float32)
    images = batch("img", n=4)._replace(inputs=pixels)
    (message,) = encode(images)
    got = decode(message)
    assert got.inputs.dtype == np.uint8 and got.inputs.shape == (4, 28, 28)
    assert len(message) < 4 * 28 * 28 + 1024  # not 4 x 3,136 bytes of float32
    np.testing.assert_array_equal(got.inputs, pixels)
    assert got.stored() == images.stored()  # the same row, bit for bit
    # one fraction, one -0.0, or rows under 1 KB: float32 on the wire, stored as before
    for inputs in (
        np.where(np.arange(784).reshape(28, 28) == 5, 0.5, pixels),
        np.where(np.arange(784).reshape(28, 28) == 5, -0.0, pixels),
        pixels[:, :8, :8],
    ):
        sent = images._replace(inputs=inputs.astype(np.float32))
        (message,) = encode(sent)
        got = decode(message)
        assert got.inputs.dtype == np.float32
        assert got.stored() == sent.stored()


def test_trace_ids_go_over_the_wire_per_row_and_only_when_there_are_some() -> None:
    traces = ["ab" * 16, "ab" * 16, None, "cd" * 16, "cd" * 16]
    sent = batch("t", n=5)._replace(traces=traces)
    (message,) = encode(sent)
    got = decode(message)
    assert list(got.traces or ()) == traces
    assert json.loads(got.stored().rows)["traces"] == traces
    # without trace ids (tracing off) the message is what it was: no key, and none stored
    (plain,) = encode(batch("t", n=5))
    assert b"traces" not in plain and decode(plain).traces is None
    assert "traces" not in json.loads(decode(plain).stored().rows)
    # split messages keep each row's trace id with it
    images = batch("img", n=100, width=28 * 28)._replace(traces=[f"{i:032x}" for i in range(100)])
    messages = encode(images)
    assert len(messages) > 1 and all(len(m) <= MAX_MESSAGE for m in messages)
    assert [t for m in messages for t in decode(m).traces or ()] == list(images.traces or ())


def test_big_batches_are_split_and_oversized_rows_refused() -> None:
    images = batch("img", n=100, width=28 * 28)  # 313 KB of inputs
    messages = encode(images)
    assert len(messages) > 1 and all(len(m) <= MAX_MESSAGE for m in messages)
    ids = [i for m in messages for i in decode(m).ids]
    assert ids == list(images.ids)
    assert encode(batch("huge", n=1, width=MAX_MESSAGE)) == []
    for bad in (b"B\x00", b"X" + bytes(8), messages[0][:-1]):
        with pytest.raises(ValueError):
            decode(bad)


def test_gathered_batches_merge_into_one_per_version_and_keep_each_rows_time() -> None:
    a1 = batch("a1", n=2)._replace(time=T0 + 1)
    a2 = batch("a2", n=3)._replace(time=T0 + 2, traces=["ab" * 16, None, "cd" * 16])
    b1 = batch("b1", n=1, model="other")
    a3 = batch("a3", n=1)._replace(time=T0 + 3)
    merged = merge([a1, b1, a2, a3])
    assert [(m.model, len(m.ids)) for m in merged] == [("m", 6), ("other", 1)]
    (message,) = encode(merged[0])
    got = decode(message)
    stored = got.stored()
    rows = json.loads(stored.rows)
    assert rows["ids"] == [*a1.ids, *a2.ids, *a3.ids]
    assert rows["times"] == [T0 + 1] * 2 + [T0 + 2] * 3 + [T0 + 3] and stored.time == T0 + 1
    assert rows["traces"] == [None, None, "ab" * 16, None, "cd" * 16, None]
    expected = np.concatenate([a1.inputs, a2.inputs, a3.inputs])
    assert stored.inputs == expected.astype("<f4").tobytes()
    assert merge([b1]) == [b1]  # alone: as it was
    bad = message.replace(b'"times":[', b'"times":["soon",', 1)
    with pytest.raises(ValueError):
        decode(bad)


# -- the writer process --------------------------------------------------------------------
def test_on_an_event_loop_a_few_milliseconds_of_batches_go_together(
    writer: WriterProcess, tmp_path: Path
) -> None:
    log = PredictionLog(writer.socket_path, gather_s=0.05)

    async def serve() -> tuple[int, int, int]:
        for i in range(20):
            assert log.record(batch(f"g{i}", n=2)._replace(time=T0 + i))
        waiting = log.sent  # nothing sent yet: gathered for gather_s
        await asyncio.sleep(0.2)
        shipped = log.sent  # all of it, in one message, once gather_s passed
        log.record(batch("late", n=1))
        flushed = await asyncio.to_thread(log.flush)  # feedback's flush sends what waits
        return waiting, shipped, int(flushed)

    assert asyncio.run(serve()) == (0, 40, 1)
    assert sorted(stored(tmp_path)) == sorted([f"g{i}-{j}" for i in range(20) for j in (0, 1)]
                                              + ["late-0"])  # fmt: skip
    with closing(sqlite3.connect(tmp_path / "log.db")) as conn:
        times = dict(conn.execute("SELECT id, time FROM predictions"))
    assert [times[f"g{i}-1"] for i in range(20)] == [T0 + i for i in range(20)]
    # without a running loop (a script, a thread) every record goes at once
    log.record(batch("now", n=1))
    assert log.sent == 42
    log.close()


def test_every_row_from_every_connection_is_committed_once(
    writer: WriterProcess, tmp_path: Path
) -> None:
    logs = [PredictionLog(writer.socket_path) for _ in range(3)]

    def send(index: int) -> None:
        for i in range(100):
            assert logs[index].record(batch(f"c{index}-{i}", n=1 + i % 4))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = {f"c{c}-{i}-{j}" for c in range(3) for i in range(100) for j in range(1 + i % 4)}
    assert all(log.flush() for log in logs)  # everything sent, by every connection
    assert sorted(stored(tmp_path)) == sorted(expected)
    figures = logs[0].stats()
    assert figures is not None
    assert (figures["written"], figures["dropped"]) == (len(expected), 0)
    for log in logs:
        log.close()


def test_rows_read_are_committed_at_the_end_of_the_linger_window_not_the_next_read(
    tmp_path: Path,
) -> None:
    """The writer sleeps up to 50 ms between reads of a quiet connection; rows it has read
    are committed 20 ms after they came (kill -9 loses at most that window), not when it
    wakes to read again. Here the reads are 0.4 s apart and the window 50 ms."""
    path = tmp_path / "w.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(path))
    listener.listen(4)
    with open_store(tmp_path / "log.db") as store:
        writer = Writer(store, listener, linger=0.05, poll=Poll(shortest=0.4, longest=0.4))
        thread = threading.Thread(target=writer.run)
        thread.start()
        log = PredictionLog(path)
        try:
            time.sleep(0.1)  # the writer knows the data connection and sleeps between reads
            log.record(batch("quiet", n=2))  # no running loop: sent at once
            while writer.rows_received < 2:
                time.sleep(0.002)
            read = time.monotonic()
            while len(stored(tmp_path)) < 2 and time.monotonic() < read + 2.0:
                time.sleep(0.005)
            waited = time.monotonic() - read
            assert stored(tmp_path) == ["quiet-0", "quiet-1"]
            assert waited < 0.25, f"committed {waited:.3f} s after it was read"
        finally:
            log.close()
            writer.stop()
            thread.join(5)
            # a writer is a process of its own and leaves these to exit(); here they are closed
            for end in (writer._wake_read, writer._wake_write, *writer.connections, listener):
                end.close()
            writer.selector.close()


def test_flush_answers_for_rows_another_connection_sent(
    writer: WriterProcess, tmp_path: Path
) -> None:
    sender, asker = PredictionLog(writer.socket_path), PredictionLog(writer.socket_path)
    for i in range(50):
        sender.record(batch(f"s{i}"))
    assert asker.flush()  # a feedback call on another worker must find them
    assert len(stored(tmp_path)) == 150
    sender.close()
    asker.close()


def test_drift_is_computed_by_the_writer_from_the_model_cards(writer: WriterProcess) -> None:
    log = PredictionLog(writer.socket_path)
    card_rows = batch("x", n=200, model="breast-cancer-ann")
    log.record(card_rows)
    log.record(batch("y", n=5, model="no-such-model"))  # no baseline: no drift, still logged
    assert log.flush()
    figures = log.stats()
    assert figures is not None and figures["written"] == 205
    drift = {(m, v, f) for m, v, f, _ in figures["drift"]}
    assert ("breast-cancer-ann", 1, "mean radius") in drift and len(drift) == 30
    log.close()


def test_sigterm_commits_everything_already_sent(writer: WriterProcess, tmp_path: Path) -> None:
    log = PredictionLog(writer.socket_path)
    for i in range(300):
        log.record(batch(f"t{i}"))
    assert writer.stop() == 0  # no flush first: what was sent is read and committed
    assert log.sent > 0 and len(stored(tmp_path)) == log.sent
    assert not writer.socket_path.exists()
    log.close(timeout=0.5)


def test_kill_9_loses_at_most_the_last_window_and_never_corrupts(tmp_path: Path) -> None:
    writer = WriterProcess(f"sqlite:///{tmp_path / 'log.db'}")
    log = PredictionLog(writer.socket_path)
    for i in range(200):
        log.record(batch(f"k{i}"))
    assert log.flush()
    for i in range(20):  # sent, maybe not committed yet
        log.record(batch(f"late{i}"))
    writer.process.kill()
    writer.process.wait()
    with closing(sqlite3.connect(tmp_path / "log.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    ids = stored(tmp_path)
    assert {f"k{i}-{j}" for i in range(200) for j in range(3)} <= set(ids)  # flushed: kept
    # a new writer on the same socket; the connection comes back by itself
    again = WriterProcess(f"sqlite:///{tmp_path / 'log.db'}", socket_path=writer.socket_path)
    time.sleep(0.3)  # the client retries every 0.2 s
    for i in range(5):
        log.record(batch(f"after{i}"))
    assert log.flush()
    assert {f"after{i}-0" for i in range(5)} <= set(stored(tmp_path))
    # the new writer continues the totals of the killed one (they live beside the socket)
    figures = log.stats()
    assert figures is not None and figures["written"] >= 200 * 3 + 5 * 3
    log.close()
    again.stop()


def test_a_writer_that_falls_behind_costs_rows_never_waits(
    writer: WriterProcess, tmp_path: Path
) -> None:
    log = PredictionLog(writer.socket_path, max_pending=300)
    os.kill(writer.process.pid, signal.SIGSTOP)  # a writer that stops reading
    try:
        began = time.perf_counter()
        accepted = sum(log.record(batch(f"b{i}", n=10, width=784)) for i in range(200))
        assert time.perf_counter() - began < 2.0  # never blocked
        assert 0 < accepted < 200 and log.dropped == (200 - accepted) * 10
        assert log.flush(timeout=0.2) is False
    finally:
        os.kill(writer.process.pid, signal.SIGCONT)
    assert log.flush()
    assert len(stored(tmp_path)) == accepted * 10  # all that was accepted, nothing else
    # the client's drops are reported to the writer: its total counts every process's once
    figures = log.stats()
    assert figures is not None and figures["dropped"] == log.dropped
    assert figures["written"] == accepted * 10
    log.close()


def test_a_full_disk_drops_rows_counted_and_the_writer_carries_on(tmp_path: Path) -> None:
    socket_path = tmp_path / "w.sock"
    limit = 1_000_000  # bytes any file of the writer may reach: the "disk"

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    process = subprocess.Popen(
        [sys.executable, "-m", "predictionlog", "--socket", str(socket_path),
         "--store", f"sqlite:///{tmp_path / 'log.db'}"],
        cwd=ROOT, preexec_fn=small_disk, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(200):
            if socket_path.exists():
                break
            time.sleep(0.05)
        log = PredictionLog(socket_path)
        for i in range(100):
            log.record(batch(f"d{i}", n=10, width=784))  # 3 MB: far over the disk
            if i % 5 == 4:
                assert log.flush()
        figures = log.stats()
        assert figures is not None
        assert figures["dropped"] > 0 and figures["written"] > 0
        assert figures["written"] + figures["dropped"] == 1000
        assert process.poll() is None  # still running
    finally:
        log.close()
        process.terminate()
        _, errors = process.communicate(timeout=30)
    assert "failed; dropped" in errors
    with closing(sqlite3.connect(tmp_path / "log.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_retention_runs_in_the_writer(tmp_path: Path) -> None:
    writer = WriterProcess(
        f"sqlite:///{tmp_path / 'log.db'}", retention=Retention(None, max_rows=100, max_bytes=None)
    )
    log = PredictionLog(writer.socket_path)
    for i in range(100):
        log.record(batch(f"r{i}"))
    assert log.flush()
    deadline = time.monotonic() + 10
    while (figures := log.stats()) is not None and figures["rows"] > 100:
        assert time.monotonic() < deadline, figures
        time.sleep(0.2)
    # whole batches (each record() of 3 rows was sent, and is stored, as one): the newest
    # 33 remain, 99 rows, the most that fit in 100
    assert figures is not None and figures["pruned"] == 201 and figures["rows"] == 99
    assert stored(tmp_path)[0] == "r67-0"
    log.close()
    writer.stop()


def test_a_store_that_cannot_open_is_a_clear_startup_error(tmp_path: Path) -> None:
    (tmp_path / "folder.db").mkdir()
    with pytest.raises(RuntimeError, match="folder"):
        WriterProcess(f"sqlite:///{tmp_path / 'folder.db'}")


def test_bad_arguments_are_refused(writer: WriterProcess) -> None:
    for kwargs in [{"sample": 1.5}, {"sample": -0.1}, {"max_pending": 0}]:
        with pytest.raises(ValueError):
            PredictionLog(writer.socket_path, **kwargs)  # type: ignore[arg-type]


def test_sampling_keeps_the_requested_share_deterministically(writer: WriterProcess) -> None:
    def kept(sample: float, seed: int) -> list[bool]:
        log = PredictionLog(writer.socket_path, sample=sample, seed=seed)
        choices = [log.sampled() for _ in range(2000)]
        log.close()
        return choices

    assert not any(kept(0.0, 1)) and all(kept(1.0, 1))
    half = kept(0.5, 7)
    assert 850 <= sum(half) <= 1150  # binomial(2000, 0.5): 6+ standard deviations
    assert kept(0.5, 7) == half and kept(0.5, 8) != half


@pytest.mark.server  # a real PostgreSQL server
def test_the_writer_logs_to_postgresql_with_retention() -> None:
    require_psycopg()
    with running_postgres() as server:
        url = server.new_database()
        writer = WriterProcess(url, retention=Retention(None, max_rows=50, max_bytes=None))
        log = PredictionLog(writer.socket_path)
        try:
            for i in range(40):
                assert log.record(batch(f"pg{i}"))
            assert log.flush()
            deadline = time.monotonic() + 15
            while (figures := log.stats()) is not None and figures["pruned"] < 70:
                assert time.monotonic() < deadline, figures
                time.sleep(0.2)
            with closing(open_store(url)) as store:
                assert store.count_predictions() == 48  # whole batches of 3
                got = store.get_prediction("pg39-2")
                assert got is not None and got.inputs.shape == (30,)
                assert store.get_prediction("pg0-0") is None  # pruned, oldest first
        finally:
            log.close()
            writer.stop()


def test_totals_kept_in_a_file_continue_in_the_next_writer(tmp_path: Path) -> None:
    first = Counters(tmp_path / "counters")
    first.add("written", 7)
    first.add("dropped", 2)
    again = Counters(tmp_path / "counters")  # a writer started after the first one died
    again.add("written", 1)
    assert again.as_dict() == {"written": 8, "dropped": 2, "pruned": 0, "malformed": 0}
    assert Counters().as_dict()["written"] == 0  # without a file: in memory, from zero


def test_the_writer_tells_its_store_when_the_service_is_saturated(tmp_path: Path) -> None:
    """At a commit, once per change (SQLite then checkpoints in larger steps)."""
    import socket

    from predictionlog.pacing import Pacer
    from predictionlog.writer import Writer

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(str(tmp_path / "writer.sock"))
    listener.listen()
    pacer = Pacer()
    with open_store(tmp_path / "log.db") as store, closing(listener):
        told: list[bool] = []
        tell = store.saturated
        store.saturated = lambda busy: (told.append(busy), tell(busy))  # type: ignore[method-assign]
        writer = Writer(store, listener, pacer=pacer)
        for prefix, busy in (("a", False), ("b", True), ("c", True), ("d", False)):
            pacer.saturated = busy
            writer.pending, writer.pending_rows = [batch(prefix).stored()], 3
            writer._commit()
        assert told == [True, False] and store.count_predictions() == 12
        for end in (writer._wake_read, writer._wake_write, writer.selector):
            end.close()
