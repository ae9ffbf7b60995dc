"""The log writer's side of retention: the store's figures (measured now and then, kept
current in between from what is committed and pruned, since measuring a large log takes a
while) and the retention steps taken on them, each paced like the writer's other work."""

from __future__ import annotations

import logging
from collections.abc import Callable

from predictionlog.counters import Counters
from predictionlog.records import Stored
from predictionlog.retention import Retention, Usage
from predictionlog.store import Store

log = logging.getLogger("nnserve.predictionlog.writer")
#: Retention steps per pruning turn (each at most ``Retention.batch`` rows).
PRUNE_STEPS = 8


class Pruner:
    def __init__(
        self,
        store: Store,
        retention: Retention | None,
        counts: Counters,
        pause: Callable[[], object],
    ) -> None:
        self.store = store
        self.retention = retention
        self.counts = counts
        self.pause = pause
        self.usage = Usage(0, 0, None)

    def measure(self) -> None:
        try:
            self.usage = self.store.usage()
        except Exception as exc:
            log.error("measuring the prediction log failed: %s", exc)

    def bytes_of(self, batches: list[Stored], rows: int) -> int:
        """What ``batches`` of ``rows`` predictions add to the store: at the measured mean
        per row, or until there is one, their own bytes plus an id's."""
        if self.usage.rows:
            return self._bytes_of_rows(rows)
        return sum(b.nbytes for b in batches) + 64 * rows

    def grew(self, rows: int, grown: int) -> None:
        """Rows committed (or, negative, pruned) and the bytes they took."""
        usage = self.usage
        total = max(0, usage.rows + rows)
        self.usage = Usage(total, max(0, usage.bytes + grown) if total else 0, usage.oldest)

    def make_room(self, rows: int, incoming: int) -> None:
        """Before a commit that would take the log past a bound: prune first, so that the
        store never holds more than its bound (see ``Retention.make_room``)."""
        if self.retention is None:
            return
        try:
            removed = self.retention.make_room(
                self.store, self.usage, rows, incoming, pause=self.pause
            )
        except Exception as exc:
            log.error("pruning the prediction log failed: %s", exc)
            return
        self._pruned(removed)

    def prune(self, interrupted: Callable[[], bool]) -> None:
        """A few retention steps (at most :data:`PRUNE_STEPS`, each offering the CPU after
        it), until ``interrupted()`` (rows to commit, a connection to read): a full log is
        pruned a little after every commit and every second until its bounds hold, never
        in one long burst (a burst of a tenth of a 1 GB log is seconds of deletes)."""
        if self.retention is None:
            return
        try:
            for _ in range(PRUNE_STEPS):
                removed = self.retention.step(self.store, self.usage, pause=self.pause)
                self._pruned(removed)
                if removed <= 0:
                    break
                self.pause()
                if interrupted():
                    break
        except Exception as exc:
            log.error("pruning the prediction log failed: %s", exc)

    def _pruned(self, removed: int) -> None:
        if removed > 0:
            self.counts.add("pruned", removed)
            self.grew(-removed, -self._bytes_of_rows(removed))

    def _bytes_of_rows(self, n: int) -> int:
        usage = self.usage
        return int(n * usage.bytes / usage.rows) if usage.rows else 0
