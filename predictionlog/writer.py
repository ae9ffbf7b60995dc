"""The log writer process: ``python -m predictionlog --socket PATH --store URL ...``.

ONE process owns the prediction log's writes for every service process (worker) of a
machine: each connects to its Unix socket and sends batch messages (``wire``: what it
recorded in the last few milliseconds, one ``send``); this process decodes them, commits them
to the store in one transaction per ``linger`` window (20 ms) or 128 rows, updates input
drift, and enforces the retention bounds between commits, in bursts of about 100 µs at a
lower priority, paced (``pacing``) so that on a shared core requests never wait long for it.
One writer also means one SQLite writer: no lock contention between workers. It answers
``flush`` (everything received so far, from every connection, is committed) and ``stats``
(its figures, for the service's ``/metrics``).

It stops on SIGTERM or SIGINT, and when the process that started it is gone: either way it
first reads what is left on every connection and commits it. Killed with SIGKILL, it loses
the rows received in its last ``linger`` window (at most 20 ms, or 128 rows) and those still
in socket buffers; SQLite's WAL and PostgreSQL's transactions keep the store itself intact.
Its totals (written, dropped, pruned) live in a file beside the socket (``counters``): a
writer started again on the same socket continues them.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import time
from pathlib import Path
from typing import Any

import orjson

from predictionlog.counters import Counters
from predictionlog.drift import Drifts
from predictionlog.pacing import Pacer, Poll, runs
from predictionlog.pruner import Pruner
from predictionlog.records import Stored
from predictionlog.retention import Retention
from predictionlog.store import Store
from predictionlog.wire import (
    BATCH,
    CONTROL,
    DATA,
    DROPPED,
    FLUSH,
    MAX_MESSAGE,
    STATS,
    decode,
    decode_dropped,
)  # fmt: skip

log = logging.getLogger("nnserve.predictionlog.writer")
#: Seconds between drift updates (each bins only the rows still in the window after it) ...
DRIFT_EVERY = 2.0
#: ... in chunks of this many rows (time steps for sequences): below 100 µs each.
DRIFT_CHUNK = 128


class Writer:
    def __init__(
        self,
        store: Store,
        listener: socket.socket,
        *,
        repository: Path | None = None,
        retention: Retention | None = None,
        linger: float = 0.02,
        poll: Poll | None = None,
        batch_rows: int = 128,
        drift_window: int = 2000,
        prune_interval: float = 1.0,
        parent: int | None = None,
        counters: Counters | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        self.store = store
        self.listener = listener
        self.linger = linger
        self.poll = poll or Poll()
        self.batch_rows = batch_rows
        self.prune_interval = prune_interval
        self.parent = parent
        self.selector = selectors.DefaultSelector()
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ)
        self.connections: set[socket.socket] = set()
        self.data: set[socket.socket] = set()  # of those, the ones that send batches
        self.pending: list[Stored] = []  # batches received, not yet committed
        self.pending_rows = 0  # the predictions in them
        self.drifts = Drifts(repository, drift_window)
        self.pending_since = 0.0
        #: written, dropped (here and reported by the services), pruned, malformed
        self.counts = counters or Counters()
        self.rows_received = self.bytes_received = 0
        self.pacer = pacer or Pacer()
        self.saturated = False  # what the store was last told (``Store.saturated``)

        self.next_drift = 0.0
        #: The store's figures (measured every ``prune_interval``) and its retention
        self.pruner = Pruner(store, retention, self.counts, self._pause)
        self.next_measure = self.next_prune = 0.0
        self.stopping = False
        # a signal wakes the loop at once (its handler only sets ``stopping``)
        self._wake_read, self._wake_write = socket.socketpair()
        for end in (self._wake_read, self._wake_write):
            end.setblocking(False)
        self.selector.register(self._wake_read, selectors.EVENT_READ)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Data connections are read every few milliseconds (``pacing.Poll``: when they hold
        about 100 KB, every 2 to 50 ms), not when readable: a service that sends never wakes
        this process (a context switch per request would cost more than the send), the
        socket buffers what arrives meanwhile. Control connections, new connections and
        signals wake it at once."""
        more, sleep = False, self.poll.seconds
        while not self.stopping:
            ready = self.selector.select(0 if more else sleep)
            self.pacer.rested()
            for key, _ in ready:
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj is self._wake_read:
                    self._wake_read.recv(512)
                else:
                    self._read(key.fileobj)  # type: ignore[arg-type]
            received = self.bytes_received
            more = self._read_data(limit=256)
            sleep = self.poll.read(self.bytes_received - received)
            now = time.monotonic()
            if self.pending and (
                now >= self.pending_since + self.linger or self.pending_rows >= self.batch_rows
            ):
                self._commit()
                self._prune()
            if self.pending:  # due at the end of its linger window, not at the next read
                sleep = min(sleep, max(0.0, self.pending_since + self.linger - now))
            if now >= self.next_measure:
                self.pruner.measure()
                self.next_measure = now + max(self.prune_interval, self.store.measure_every)
            if now >= self.next_prune:  # the age bound moves with the clock
                self._prune()
                self.next_prune = now + self.prune_interval
            if self.parent is not None and os.getppid() != self.parent:
                log.warning("the service that started the log writer is gone; stopping")
                self.stopping = True
        self._drain_all()
        self._commit()

    def stop(self, *_: object) -> None:
        self.stopping = True

    def _accept(self) -> None:
        """A new connection says first what it is (``wire.DATA`` or ``wire.CONTROL``); until
        then it is watched like a control connection."""
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.connections.add(conn)
        self.selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket, limit: int = 256) -> int:
        """Up to ``limit`` messages from one connection (no connection starves the others);
        how many it read."""
        for done in range(limit):
            if conn not in self.connections:  # closed while answering it
                return done
            try:
                message = conn.recv(MAX_MESSAGE)
            except BlockingIOError:
                return done
            except OSError:
                message = b""
            if not message:
                self._close(conn)
                return done
            kind = message[:1]
            if kind == BATCH:
                self._add(message)
            elif kind == DROPPED:  # rows a service could not send (its backlog was full)
                try:
                    self.counts.add("dropped", decode_dropped(message))
                except ValueError:
                    self.counts.add("malformed", 1)
            elif kind == DATA:  # from now on polled, not watched
                self.selector.unregister(conn)
                self.data.add(conn)
            elif kind == CONTROL:
                pass
            elif kind == FLUSH:
                self._drain_all()
                self._commit()
                self._drift_now()
                self._answer(conn, {"written": self.counts["written"],
                                    "dropped": self.counts["dropped"]})  # fmt: skip
            elif kind == STATS:
                self._answer(conn, self.stats())
            else:
                self.counts.add("malformed", 1)
        return limit

    def _read_data(self, limit: int) -> bool:
        """Up to about ``limit`` rows from each data connection, a message at a time with a
        pause between them (``pacing``: on a shared core, the service's requests should not
        wait for this process). True if a connection may have more."""
        more = False
        for conn in list(self.data):
            start = self.rows_received
            while conn in self.data and self._read(conn, limit=1):
                self._pause()
                if self.rows_received - start >= limit:
                    more = True
                    break
        return more

    def _pause(self) -> None:
        """Between bursts of reading, writing, drift and pruning: on a shared core a request
        should not wait for this process (``pacing``)."""
        self.pacer.pause()

    def _drain_all(self) -> None:
        """Everything waiting on every data connection (flush, stop)."""
        while self._read_data(limit=8192):
            pass

    def _close(self, conn: socket.socket) -> None:
        """Once per connection: a connection closed while answering it (its peer gave up
        waiting and went) is seen again by the read loop it was answered from."""
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        if conn in self.data:
            self.data.discard(conn)
        else:
            self.selector.unregister(conn)
        conn.close()

    def _answer(self, conn: socket.socket, body: dict[str, Any]) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(5.0)
            conn.send(orjson.dumps(body))
        except OSError:
            self._close(conn)
        else:
            conn.setblocking(False)

    # -- rows --------------------------------------------------------------------------------
    def _add(self, message: bytes) -> None:
        self.bytes_received += len(message)
        try:
            batch = decode(message)
        except ValueError as exc:
            self.counts.add("malformed", 1)
            log.error("ignoring a malformed batch message: %s", exc)
            return
        self.rows_received += len(batch.ids)
        self.pacer.ran(len(batch.ids), runs(batch.times))
        if not self.pending:
            self.pending_since = time.monotonic()
        self.pending.append(batch.stored())
        self.pending_rows += len(batch.ids)
        self.drifts.observe(batch.model, batch.version, batch.inputs)

    def _commit(self) -> None:
        if not self.pending:
            return
        batches, rows = self.pending, self.pending_rows
        self.pending, self.pending_rows = [], 0
        incoming = self.pruner.bytes_of(batches, rows)
        self.pacer.lag(time.time() - batches[0].time)  # the oldest row's age
        if self.pacer.saturated != self.saturated:
            self.saturated = self.pacer.saturated
            self.store.saturated(self.saturated)
        self.pruner.make_room(rows, incoming)
        try:
            self.store.write_batches(batches, pause=self._pause)
        except Exception as exc:
            self.counts.add("dropped", rows)
            self.drifts.written(False)  # rows not written do not count for drift either
            log.error("writing %d predictions to the log failed; dropped: %s", rows, exc)
            return
        self._pause()
        self.drifts.written(True)
        self.counts.add("written", rows)
        self.pruner.grew(rows, incoming)
        if time.monotonic() >= self.next_drift:  # vectorized over many commits' rows
            self._drift_now()

    def _drift_now(self) -> None:
        self.next_drift = time.monotonic() + DRIFT_EVERY
        try:
            self.drifts.update(self._pause, DRIFT_CHUNK)
        except Exception as exc:  # a malformed baseline must not stop the log
            log.error("updating input drift failed: %s", exc)
        self._pause()

    def _prune(self) -> None:
        self.pruner.prune(lambda: bool(self.pending or self.selector.select(0)))

    def stats(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            **self.counts.as_dict(),
            "rows": self.pruner.usage.rows,
            "bytes": self.pruner.usage.bytes,
            "oldest": self.pruner.usage.oldest,
            "retention": retention.describe()
            if (retention := self.pruner.retention)
            else "no bound",
            "drift": self.drifts.figures(),
        }
