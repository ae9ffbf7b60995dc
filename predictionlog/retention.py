"""Bounds on the prediction log: by age, by row count and by bytes, enforced by the writer
process in small steps between its commits, so no request and no insert ever waits on it.

Each step looks at the store's figures and removes the oldest predictions (with their
feedback) that break a bound, at most ``batch`` rows at a time. The byte bound works with two
marks: once above ``high * max_bytes`` it prunes, step after step, down to ``low *
max_bytes``, and then not again until the log is back above the high mark: a full log is
pruned in one burst per tenth of its bound, not a few rows after every commit.

Space: the pages a burst frees (the tenth of the bound between the marks) are what the next
rows fill, so they are kept as the store's free space (:meth:`Retention.slack`) and only what
is freed beyond it goes back to the file system (SQLite: incremental vacuum; PostgreSQL's
autovacuum reuses space by itself). Giving pages back and taking them again costs a full log
about as much as the deletes (measured: 11 µs per 4 KB row each way); the file stays within
the high mark plus one commit either way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Usage:
    rows: int
    bytes: int  # what the bound counts (see each store's ``usage``)
    oldest: float | None  # time of the oldest prediction kept, unix seconds


class Prunable(Protocol):
    def usage(self) -> Usage: ...

    def prune_oldest(
        self, n: int, older_than: float | None = None, pause: Callable[[], object] | None = None
    ) -> int:
        """Remove the oldest predictions, about ``n`` (whole batches, only those before
        ``older_than`` if set) and their feedback; the number removed. ``pause``: called
        between small chunks."""
        ...

    def reclaim(self, keep: int = 0) -> None:
        """Return freed space beyond ``keep`` bytes, which stay for new rows (SQLite:
        incremental vacuum; a no-op where the engine reuses space by itself)."""
        ...


@dataclass
class Retention:
    max_age_s: float | None = 7 * 24 * 3600.0
    max_rows: int | None = None
    max_bytes: int | None = 1 << 30
    #: rows removed per step at most: one transaction (the writer hands it its pause: it
    #: offers the CPU after every batch, see ``SQLStore.prune_oldest``); each commit writes
    #: the pages it changed, so fewer and larger steps cost a draining log less
    batch: int = 512
    high: float = 0.95
    low: float = 0.85
    #: between the marks: pruning down to the low one since the high one was passed
    draining: bool = field(default=False, compare=False, repr=False)

    def describe(self) -> str:
        parts = []
        if self.max_age_s is not None:
            parts.append(f"{self.max_age_s / 86400:g} days")
        if self.max_rows is not None:
            parts.append(f"{self.max_rows} rows")
        if self.max_bytes is not None:
            parts.append(f"{self.max_bytes / 1e6:g} MB")
        return ", ".join(parts) or "no bound"

    def step(
        self,
        store: Prunable,
        usage: Usage | None = None,
        now: float | None = None,
        pause: Callable[[], object] | None = None,
    ) -> int:
        """One bounded pruning step; the rows removed (0 when every bound holds). ``usage``:
        the store's figures if the caller keeps them (measuring can be slow), else measured;
        ``pause``: handed to the store, called between small chunks of deletes."""
        usage = store.usage() if usage is None else usage
        if usage.rows == 0:
            return 0
        excess = 0
        if self.max_rows is not None:
            excess = max(excess, usage.rows - self.max_rows)
        if self.max_bytes is not None:
            if usage.bytes > self.high * self.max_bytes:
                self.draining = True
            elif usage.bytes <= self.low * self.max_bytes:
                self.draining = False
            if self.draining:
                per_row = usage.bytes / usage.rows
                target = self.low * self.max_bytes
                excess = max(excess, math.ceil((usage.bytes - target) / per_row))
        removed = 0
        if excess > 0:
            removed += store.prune_oldest(min(excess, self.batch), pause=pause)
            if excess <= self.batch:
                self.draining = False  # this step took what the estimate said was over
        if self.max_age_s is not None and removed < self.batch:
            cutoff = (time.time() if now is None else now) - self.max_age_s
            if usage.oldest is not None and usage.oldest < cutoff:
                removed += store.prune_oldest(self.batch - removed, cutoff, pause)
        if removed:
            store.reclaim(self.slack())
        return removed

    def make_room(
        self,
        store: Prunable,
        usage: Usage,
        rows: int,
        nbytes: int,
        pause: Callable[[], object] | None = None,
    ) -> int:
        """Before a commit of ``rows`` rows taking ``nbytes``: remove the oldest predictions
        that the commit would take past the row or byte bound itself (at most eight steps'
        worth); the rows removed. Rarely needed: :meth:`step` keeps the log below the high
        mark between commits; this is for a bound smaller than a few commits, or a burst."""
        if usage.rows == 0:
            return 0
        excess = 0
        if self.max_rows is not None:
            excess = usage.rows + rows - self.max_rows
        if self.max_bytes is not None and usage.bytes + nbytes > self.max_bytes:
            per_row = usage.bytes / usage.rows
            excess = max(excess, math.ceil((usage.bytes + nbytes - self.max_bytes) / per_row))
        if excess <= 0:
            return 0
        removed = store.prune_oldest(min(excess, 8 * self.batch), pause=pause)
        if removed:
            store.reclaim(self.slack())
        return removed

    def slack(self) -> int:
        """Free bytes a store keeps for new rows after pruning: what one burst frees."""
        if self.max_bytes is None:
            return 0
        return int((self.high - self.low) * self.max_bytes)
