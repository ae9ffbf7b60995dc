"""When the log writer offers the CPU back, so that on a core it shares with the service a
request never waits long for it, and on a saturated service it still keeps up.

The writer calls :meth:`Pacer.pause` between small steps of work (a message read, 8 rows
inserted or pruned, 128 rows of drift, a commit); once its steps since the last pause (or
since it woke) took ``BURST_S`` (100 µs), the pacer offers the CPU with ``sched_yield``, so a
request that arrived meanwhile waits at most about one burst. Two exceptions:

- **The service is saturated**: its batcher merged more than two rows per inference run
  over the last half second, i.e. requests queue anyway, and they wait for the CPU whoever
  holds it. The writer works through without pausing and commits each transaction in one
  go: under Linux's EEVDF scheduler every yield costs it its turn for a long while; yielding
  every 100 µs at concurrency 64 left it (then at nice 10) a third of the CPU it needs, and
  it dropped 16,000 rows in 4 s (breast-cancer-ann), none without the yields.
- **The writer is behind**: the oldest row of a commit waited more than 0.25 s (until it is
  back under 0.05 s), e.g. while pruning a log at its bound doubles its work: bursts of
  250 µs. Measured (fashion-cnn-int8, concurrency 1, a log at a 64 MB bound, 16 KB pages):
  with 100 µs bursts throughout the writer fell behind and dropped 3,700-4,400 rows in 12 s
  (p99 1.1-1.3 ms); 250 µs bursts drop none (1.3-1.5 ms); 500 µs, none (1.4-1.6 ms). On a
  log below its bound this mode should not start: with 500 µs bursts from 0.1 s, p99 at
  concurrency 1 was 0.69-0.79 ms (breast-cancer-ann) and 0.81-0.86 ms (vowels-lstm); with
  250 µs from 0.25 s, 0.51-0.59 and 0.66-0.68 ms (log off: 0.28-0.38, 0.34-0.40 ms). Why
  it started (``perf sched``): at concurrency 1 the service never sleeps (the next request
  is there before the response is out), so a writer that yields runs again only at the next
  tick (4 ms) or its own next wakeup: 100 µs a tick is 2.5 % of the core, short of the 5 %
  a writer needs at the full single-sample rate, and a lag of 0.1 s builds up in seconds.

Tried and not kept: sleeping 50 µs instead of yielding (a yield lets a woken request in only
while the service has not had more than its share of the core; a sleep always does): at
concurrency 1 on a fresh log p99 was alike (0.71-0.89 ms vs 0.61-0.67 ms with yields, 0.34-
0.49 ms log off, breast-cancer-ann), but against a log at its bound the writer's CPU per row
doubled (cache refills after every sleep: 42 vs 24 µs per fashion-cnn-int8 row) and p99 was
3.0-3.2 ms vs 1.8 ms. Telling a saturated service by the CPUs' idle time (/proc/stat): a
writer pruning a full log at concurrency 1 saturates the core itself, and then it stopped
pausing (p99 3.2-3.3 ms). Again with 16 KB pages (same test, int8 at its bound): sleeping
200-300 µs after 50-100 µs bursts (writer CPU per row 35 -> 55 µs, p99 1.1 ms, throughput
-10 %); the writer under SCHED_IDLE (at concurrency 1 the core has no idle time: it got 3-7
µs a request of the 35 it needs and dropped nine rows in ten); an EEVDF slice of 100 µs for
the writer (``sched_setattr``), with or without yields: p99 unchanged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from itertools import pairwise

#: Work between two pauses, seconds; while behind, longer.
BURST_S, BEHIND_BURST_S = 100e-6, 250e-6
#: Behind when the oldest row committed waited longer than this; caught up below the second.
BEHIND_S, CAUGHT_UP_S = 0.25, 0.05
#: Saturated when inference runs averaged more rows than this over the last window (s).
QUEUED_ROWS, WINDOW_S = 2.0, 0.5
#: The writer reads its data connections when they hold about this much (half of the ~208 KB
#: a Unix socket holds in flight, ``net.core.wmem_default``) ...
POLL_FILL = 100 * 1024
#: ... but at most and at least this often (seconds).
POLL_MIN_S, POLL_MAX_S = 0.002, 0.05


def runs(times: Sequence[float] | None) -> int:
    """Inference runs in a message: its rows' times change from one run to the next."""
    if not times:
        return 1
    return 1 + sum(1 for a, b in pairwise(times) if a != b)


class Pacer:
    def __init__(self) -> None:
        self.behind = False
        self.saturated = False
        self._rows = self._runs = 0
        self._measured = self._started = time.monotonic()

    def rested(self) -> None:
        """The writer slept (waiting for work): a burst starts now."""
        self._started = time.monotonic()

    def ran(self, rows: int, runs: int) -> None:
        """A message came with ``rows`` rows from ``runs`` inference runs."""
        self._rows += rows
        self._runs += runs

    def lag(self, seconds: float) -> None:
        """The age of the oldest row in a commit."""
        if seconds > BEHIND_S:
            self.behind = True
        elif seconds < CAUGHT_UP_S:
            self.behind = False

    def pause(self) -> None:
        """Between two steps of work: see the module docstring."""
        now = time.monotonic()
        if now - self._measured >= WINDOW_S:
            self.saturated = self._runs > 0 and self._rows > QUEUED_ROWS * self._runs
            self._rows = self._runs = 0
            self._measured = now
        if self.saturated or now - self._started < (BEHIND_BURST_S if self.behind else BURST_S):
            return
        os.sched_yield()
        self._started = time.monotonic()


class Poll:
    """How long the writer sleeps before it reads its data connections again: as long as they
    take to fill to ``fill`` bytes at the rate they have been filling (rising at once, falling
    slowly), within ``[shortest, longest]``. A service that sends little wakes the writer 20
    times a second instead of 100, and each wakeup commits more rows at once (fewer pages
    written per row, fewer cache refills for the service sharing its core); one that sends a
    lot is read before a connection's in-flight allowance fills and its rows wait in the
    service's backlog. Measured against a fixed 10 ms (three services side by side, the log
    at its 1 GB bound, concurrency 64): writer CPU per row breast-cancer-ann 7.7 -> 5.6 µs,
    co2-lstm 11.9 -> 9.5 and 13.4 -> 10.0, co2-gru 9.3 -> 7.2, vowels-lstm 10.3 -> 8.2;
    fashion-cnn's float32 images unchanged (17.7 vs 18.3: 13 MB/s, a poll near 8 ms); no row
    dropped. A fixed 50 ms dropped rows: a connection holds ~208 KB in flight, 4 MB/s at
    50 ms."""

    def __init__(
        self, fill: int = POLL_FILL, shortest: float = POLL_MIN_S, longest: float = POLL_MAX_S
    ) -> None:
        self.fill, self.shortest, self.longest = fill, shortest, longest
        self.rate = 0.0  # bytes per second, as last estimated
        self.seconds = shortest  # the sleep until the next read
        self._bytes = 0
        self._since = time.monotonic()

    def read(self, nbytes: int) -> float:
        """The connections gave ``nbytes`` now; the seconds to sleep until the next read."""
        self._bytes += nbytes
        now = time.monotonic()
        elapsed = now - self._since
        if elapsed < self.shortest:  # a pass right after another: too short to tell a rate
            return self.seconds
        rate = self._bytes / elapsed
        self.rate = rate if rate > self.rate else 0.7 * self.rate + 0.3 * rate
        self._bytes, self._since = 0, now
        wait = self.fill / self.rate if self.rate > 0 else self.longest
        self.seconds = min(self.longest, max(self.shortest, wait))
        return self.seconds
