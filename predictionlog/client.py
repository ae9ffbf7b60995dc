"""The service side of the log: hands batches to the writer process without waiting.

:meth:`PredictionLog.record` runs on the request path. On an event loop (the service) it
only gathers the batch: the batches of ``gather_s`` seconds (5 ms), or ``gather_rows`` rows,
go to the writer together, merged into one message per model version (``wire.merge``), so
that at low concurrency the writer reads, decodes and commits tens of rows per message
instead of one, and the service pays one encode and one ``send`` per window instead of one
per request. Elsewhere (no running loop) each batch is sent at once. Messages go on a
non-blocking Unix socket: the kernel buffers them until the writer reads them. When the
writer falls behind and the socket is full, messages wait in a bounded backlog (sent again as
soon as the socket takes them); beyond ``max_pending`` rows they are dropped and counted,
and a writer that is gone costs rows, never requests. Every row recorded is either sent,
waiting (gathered or in the backlog), or counted in ``dropped``; drops are reported to the
writer as soon as the socket takes a message again, so that its ``dropped`` total (what the
service exports) counts the drops of every service process once. A service process killed
with SIGKILL loses what waits in it: at most ``gather_s`` of rows, plus the backlog while
the writer is behind or gone.

:meth:`flush` (everything recorded so far is committed), :meth:`stats` (the writer's
figures) and :meth:`close` talk to the writer on a second connection, from any thread.
:class:`predictionlog.process.WriterProcess` starts and stops the writer process itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
import select
import socket
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from predictionlog.wire import (
    CONTROL,
    DATA,
    FLUSH,
    STATS,
    Batch,
    encode,
    encode_dropped,
    fits,
    merge,
)  # fmt: skip

logger = logging.getLogger("nnserve.predictionlog")

#: Seconds between attempts to reach a writer that is gone (it is restarted within about
#: that much by whoever supervises it).
RETRY_S = 0.2
#: On an event loop, batches recorded within this many seconds go to the writer together ...
GATHER_S = 0.005
#: ... or as soon as this many rows wait.
GATHER_ROWS = 256
#: At most one "dropped" warning per this many seconds (the counter counts every row).
_DROP_WARNING_INTERVAL = 10.0


class PredictionLog:
    """A connection to the log writer; see the module docstring."""

    def __init__(
        self,
        socket_path: Path,
        *,
        sample: float = 1.0,
        max_pending: int = 10_000,
        seed: int | None = None,
        gather_s: float = GATHER_S,
        gather_rows: int = GATHER_ROWS,
    ) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"sample must be a probability in [0, 1], not {sample}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, not {max_pending}")
        self.socket_path = socket_path
        self.sample = sample
        self.max_pending = max_pending
        self.gather_s = gather_s
        self.gather_rows = gather_rows
        #: Rows dropped on this side (backlog full, writer gone, message too large).
        self.dropped = 0
        self._unreported = 0  # of those, not yet reported to the writer
        self.sent = 0  # rows handed to the writer
        self._random = random.Random(seed)
        self._lock = threading.Lock()  # the data socket and the backlog
        self._backlog: deque[tuple[bytes, int]] = deque()  # (message, rows)
        self._backlog_rows = 0
        self._gathered: list[Batch] = []  # recorded, not yet messages
        self._gathered_rows = 0
        self._due_on: asyncio.AbstractEventLoop | None = None  # the loop a ship is due on
        self._control_lock = threading.Lock()
        self._data: socket.socket | None = None
        self._control: socket.socket | None = None
        self._retry_at = 0.0
        self._closed = False
        self._last_warning = -_DROP_WARNING_INTERVAL
        #: The writer's last answer (flush or stats).
        self.last_stats: dict[str, Any] | None = None
        self._connect()

    # -- the request path ------------------------------------------------------------------
    def sampled(self) -> bool:
        """Whether the sample keeps the next batch (decided per batch, so that a response
        can say whether its predictions were logged)."""
        return self.sample >= 1.0 or (self.sample > 0 and self._random.random() < self.sample)

    def record(self, batch: Batch) -> bool:
        """Hand ``batch`` to the writer; never blocks. False if its rows were dropped."""
        n = len(batch.ids)
        with self._lock:
            if self._closed or not fits(batch):
                return self._drop(n, "log closed" if self._closed else "too large to log")
            self._send_backlog()
            if self._backlog and self._backlog_rows + self._gathered_rows + n > self.max_pending:
                return self._drop(n, "the writer is behind and the backlog is full")
            self._gathered.append(batch)
            self._gathered_rows += n
            if self._gathered_rows >= self.gather_rows or not self._ship_due():
                self._ship()
        return True

    def _ship_due(self) -> bool:
        """A ship of the gathered batches is due within ``gather_s`` on the running event
        loop; False where there is none (the caller ships now)."""
        if self.gather_s <= 0:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._due_on is not loop:
            self._due_on = loop
            loop.call_later(self.gather_s, self._due, loop)
        return True

    def _due(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            if self._due_on is loop:
                self._due_on = None
            self._ship()

    def send_backlog(self) -> None:
        """Send what waits, if the writer takes it now (never blocks); for a caller that
        runs now and then, so that a backlog does not wait for the next record()."""
        with self._lock:
            self._ship()

    def _ship(self, force: bool = False) -> None:
        """The gathered batches into the backlog as messages, then send what the socket
        takes (caller holds ``_lock``)."""
        if self._gathered:
            gathered, self._gathered, self._gathered_rows = self._gathered, [], 0
            for batch in merge(gathered):
                n = len(batch.ids)
                messages = encode(batch)
                if not messages:  # fits() said each row fits: not expected
                    self._drop(n, "too large to log")
                    continue
                for message in messages[:-1]:
                    self._backlog.append((message, 0))
                self._backlog.append((messages[-1], n))  # the rows count once the last is sent
                self._backlog_rows += n
        self._send_backlog(force)

    def _send_backlog(self, force: bool = False) -> None:
        """Send what the socket takes now (caller holds ``_lock``); ``force``: reconnect now
        if the writer was gone, not at the next retry time."""
        while self._backlog or self._unreported:
            if self._data is None and not self._reconnect(force):
                return
            assert self._data is not None
            if self._unreported:
                try:
                    self._data.send(encode_dropped(self._unreported))
                except BlockingIOError:
                    return
                except OSError as exc:
                    self._disconnect(f"the log writer is unreachable ({exc})")
                    return
                self._unreported = 0
                continue
            message, rows = self._backlog[0]
            try:
                self._data.send(message)
            except BlockingIOError:
                return
            except OSError as exc:  # the writer is gone: this waits for the next one
                self._disconnect(f"the log writer is unreachable ({exc})")
                return
            self._backlog.popleft()
            self._backlog_rows -= rows
            self.sent += rows

    def _drop(self, n: int, reason: str) -> bool:
        self.dropped += n
        self._unreported += n
        now = time.monotonic()
        if now - self._last_warning >= _DROP_WARNING_INTERVAL:
            self._last_warning = now
            logger.warning("prediction log: %s; dropped %d (%d in total)", reason, n, self.dropped)
        return False

    # -- connections -------------------------------------------------------------------------
    def _connect(self) -> None:
        data = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            data.connect(str(self.socket_path))
            data.send(DATA)
            control.connect(str(self.socket_path))
            control.send(CONTROL)
        except OSError:
            data.close()
            control.close()
            raise
        data.setblocking(False)
        self._data, self._control = data, control

    def _reconnect(self, force: bool = False) -> bool:
        if self._closed or (not force and time.monotonic() < self._retry_at):
            return False
        try:
            self._connect()
        except OSError:
            self._retry_at = time.monotonic() + RETRY_S
            return False
        return True

    def _disconnect(self, reason: str) -> None:
        """The writer is gone: the backlog waits (bounded) for the next one."""
        for sock in (self._data, self._control):
            if sock is not None:
                sock.close()
        self._data = self._control = None
        self._retry_at = time.monotonic() + RETRY_S
        logger.warning("prediction log: %s; reconnecting", reason)

    # -- control -----------------------------------------------------------------------------
    def _ask(self, request: bytes, timeout: float) -> dict[str, Any] | None:
        """One request, one answer. A request that got no answer in time (the writer is
        stuck, e.g. waiting for another process's lock on the store) leaves its connection:
        its answer comes later and would be read as the answer to the next request (a
        flush answered by an old stats, or stats by a flush), so the next request goes on a
        fresh one."""
        with self._control_lock:
            control = self._control
            if control is None:
                return None
            try:
                control.settimeout(timeout)
                control.send(request)
                answer = control.recv(1 << 20)
            except OSError:
                answer = b""
            if not answer:
                self._renew_control(control)
                return None
        self.last_stats = orjson.loads(answer)
        return self.last_stats

    def _renew_control(self, old: socket.socket) -> None:
        """A fresh control connection in place of ``old`` (caller holds ``_control_lock``);
        None if the writer cannot be reached (the next reconnect makes both again)."""
        old.close()
        fresh = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fresh.connect(str(self.socket_path))
            fresh.send(CONTROL)
        except OSError:
            fresh.close()
            if self._control is old:
                self._control = None
            return
        if self._control is old:
            self._control = fresh
        else:  # reconnected meanwhile: keep that one
            fresh.close()

    def flush(self, timeout: float = 10.0) -> bool:
        """Every row recorded before this call is committed (or counted dropped) when it
        returns True; False if that did not happen within ``timeout`` seconds. A writer
        being restarted is waited for."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._data is not None and self._control is None:
                    self._disconnect("no control connection to the log writer")
                if self._data is None:
                    self._reconnect(force=True)
                self._ship(force=True)
                connected = self._data is not None and self._control is not None
                done = connected and not self._backlog and not self._unreported
                data = self._data
            if done:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if data is None:  # the writer is gone for now: try again shortly
                time.sleep(min(remaining, 0.05))
            else:  # the socket is full: wait until it takes more
                select.select([], [data], [], min(remaining, 0.1))
        return self._ask(FLUSH, max(0.1, deadline - time.monotonic())) is not None

    def stats(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The writer's figures (``Writer.stats``), or None if it does not answer."""
        return self._ask(STATS, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Send what waits, let the writer commit it, and close the connections."""
        if self._closed:
            return
        self.flush(timeout)
        with self._lock:
            self._closed = True
            waiting = self._backlog_rows + self._gathered_rows
            if waiting or self._unreported:
                self._drop(waiting, "closing before the writer took them")
                logger.warning(
                    "prediction log: %d dropped rows not counted by the writer (closing)",
                    self._unreported,
                )
            for sock in (self._data, self._control):
                if sock is not None:
                    sock.close()
            self._data = self._control = None
