"""The service side of the log: a bounded queue and ONE background writer thread.

:meth:`PredictionLog.record` runs on the request path (the event loop): it samples, then
puts rows on a bounded queue without ever waiting. One daemon thread takes up to
``batch_size`` rows at a time and commits them in one transaction, so disk or network
latency never reaches a request. When the queue is full, rows are dropped, counted and
reported through ``on_drop`` — a slow store costs log rows, never request latency, and the
loss is always visible. Every row recorded ends up either committed (``written``) or
dropped (``dropped``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final

from predictionlog.records import Prediction
from predictionlog.store import Store

logger = logging.getLogger("nnserve.predictionlog")

#: At most one "queue full" warning per this many seconds (the counter counts every row).
_DROP_WARNING_INTERVAL = 10.0


class _Stop:
    """The sentinel that tells the writer thread to finish."""


_STOP: Final = _Stop()


class PredictionLog:
    """Writes predictions to a store off the request path; see the module docstring.

    ``written`` counts rows committed; ``dropped`` counts rows lost to a full queue, to a
    store error or to a record() after close().
    """

    def __init__(
        self,
        store: Store,
        *,
        max_queue: int = 10_000,
        sample: float = 1.0,
        batch_size: int = 256,
        linger: float = 0.05,
        on_drop: Callable[[int], None] | None = None,
        on_written: Callable[[Sequence[Prediction]], None] | None = None,
        seed: int | None = None,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, not {max_queue}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"sample must be a probability in [0, 1], not {sample}")
        self.store = store
        self.sample = sample
        self.batch_size = batch_size
        #: After the first row of a batch arrives, the writer waits this long for more: one
        #: wake-up and one transaction per batch instead of per prediction, which keeps the
        #: writer from competing with the request path for the CPU (and the GIL).
        self.linger = linger
        self.written = 0
        self.dropped = 0
        self._on_drop = on_drop
        self._on_written = on_written
        self._random = random.Random(seed)
        self._queue: queue.Queue[Prediction | _Stop] = queue.Queue(maxsize=max_queue)
        # Guards the counters; the writer notifies it after each batch so flush() can wait.
        self._progress = threading.Condition()
        self._queued = 0  # rows put on the queue so far
        self._done = 0  # of those, rows the writer has finished with (written or dropped)
        self._closing = False
        self._last_drop_warning = -_DROP_WARNING_INTERVAL
        self._thread = threading.Thread(target=self._run, name="nnserve-predictionlog", daemon=True)
        self._thread.start()

    def record(self, rows: Sequence[Prediction]) -> None:
        """Queue ``rows`` for writing (those the sample keeps); never blocks, never raises
        for a full queue: what does not fit is dropped and counted."""
        if self.sample < 1.0:
            rows = [row for row in rows if self._random.random() < self.sample]
        if not rows:
            return
        lost = 0
        with self._progress:
            if self._closing:
                lost, reason = len(rows), "the prediction log is closed"
            else:
                reason = "the prediction log queue is full"
                for row in rows:
                    try:
                        self._queue.put_nowait(row)
                    except queue.Full:
                        lost += 1
                    else:
                        self._queued += 1
            self.dropped += lost
        if lost:
            self._report_drop(lost, reason)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row recorded so far is committed (and on_written has seen it) or
        dropped by a store error. True if that happened within ``timeout`` seconds."""
        with self._progress:
            target = self._queued
            return self._progress.wait_for(lambda: self._done >= target, timeout=timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything still queued, stop the thread and close the store. Idempotent.

        If the writer cannot finish within ``timeout`` (a store that hangs), the rows still
        queued are abandoned and the store is left open, since the writer may still be
        inside it; both are logged.
        """
        with self._progress:
            if self._closing:
                return
            self._closing = True  # from now on record() drops instead of queueing
        deadline = time.monotonic() + timeout
        with contextlib.suppress(queue.Full):  # a hung writer: reported just below
            self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            with self._progress:
                pending = self._queued - self._done
            logger.error(
                "prediction log writer did not finish within %.1fs; %d rows not written",
                timeout,
                pending,
            )
            return
        try:
            self.store.close()
        except Exception:
            logger.exception("closing the prediction log store failed")

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the writer thread -------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if isinstance(first, _Stop):
                break
            if self.linger > 0 and self._queue.qsize() < self.batch_size:
                time.sleep(self.linger)
            batch = [first]
            while len(batch) < self.batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Stop):
                    stop = True
                    break
                batch.append(item)
            self._write(batch)

    def _write(self, batch: list[Prediction]) -> None:
        try:
            self.store.write_predictions(batch)
        except Exception:
            logger.exception("writing %d predictions to the log failed; dropped", len(batch))
            with self._progress:
                self.dropped += len(batch)
                self._done += len(batch)
                self._progress.notify_all()
            self._report_drop(len(batch), None)
            return
        # on_written runs before the rows count as done, so after flush() it has seen them.
        if self._on_written is not None:
            try:
                self._on_written(batch)
            except Exception:
                logger.exception("the prediction log's on_written callback failed")
        with self._progress:
            self.written += len(batch)
            self._done += len(batch)
            self._progress.notify_all()

    def _report_drop(self, count: int, reason: str | None) -> None:
        """Tell on_drop; warn (rate-limited) when the reason is not logged already."""
        if self._on_drop is not None:
            try:
                self._on_drop(count)
            except Exception:
                logger.exception("the prediction log's on_drop callback failed")
        now = time.monotonic()
        if reason is not None and now - self._last_drop_warning >= _DROP_WARNING_INTERVAL:
            self._last_drop_warning = now
            logger.warning("%s: dropped %d predictions (%d in total)", reason, count, self.dropped)
