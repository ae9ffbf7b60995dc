"""The writer's pacing (``predictionlog.pacing``): it offers the CPU between bursts of
100 µs while the service is not saturated, in bursts of 250 µs while it is behind, and works
through when the service's batcher merges requests (they queue anyway)."""

from __future__ import annotations

import pytest

from predictionlog import pacing
from predictionlog.pacing import Pacer, Poll, runs


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(pacing.time, "monotonic", lambda: now[0])
    return now


@pytest.fixture
def yields(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    count: list[int] = []
    monkeypatch.setattr(pacing.os, "sched_yield", lambda: count.append(1))
    return count


def burst(pacer: Pacer, clock: list[float], seconds: float = 2 * pacing.BURST_S) -> None:
    """Work for ``seconds``, then a pause."""
    clock[0] += seconds
    pacer.pause()


def test_the_writer_yields_between_bursts_while_requests_come_one_per_run(
    clock: list[float], yields: list[int]
) -> None:
    pacer = Pacer()
    burst(pacer, clock, pacing.BURST_S / 2)  # within its first burst: no pause
    assert yields == []
    burst(pacer, clock)
    assert len(yields) == 1
    pacer.rested()  # it slept waiting for work: a new burst starts
    burst(pacer, clock, pacing.BURST_S / 2)
    assert len(yields) == 1
    for _ in range(50):  # one request per inference run (concurrency 1)
        pacer.ran(20, 20)
    clock[0] += pacing.WINDOW_S
    burst(pacer, clock)
    assert not pacer.saturated and len(yields) == 2


def test_a_saturated_service_gets_no_pauses_and_a_writer_behind_longer_bursts(
    clock: list[float], yields: list[int]
) -> None:
    pacer = Pacer()
    pacer.ran(64 * 30, 64)  # 30 rows per inference run: the batcher merges queued requests
    clock[0] += pacing.WINDOW_S
    burst(pacer, clock)
    burst(pacer, clock, 10 * pacing.BEHIND_BURST_S)
    assert pacer.saturated and yields == []
    pacer.ran(30, 30)  # the next half second: one request per run again
    clock[0] += pacing.WINDOW_S
    burst(pacer, clock)
    assert not pacer.saturated and len(yields) == 1
    pacer.lag(0.2)  # a commit's oldest row waited 0.2 s: not yet behind (0.25 s)
    assert not pacer.behind
    pacer.lag(0.5)  # half a second: behind, bursts of 250 µs
    burst(pacer, clock, 0.8 * pacing.BEHIND_BURST_S)
    assert pacer.behind and len(yields) == 1
    burst(pacer, clock, 0.4 * pacing.BEHIND_BURST_S)
    assert len(yields) == 2
    pacer.lag(0.07)  # between the marks: still catching up
    burst(pacer, clock, 0.8 * pacing.BEHIND_BURST_S)
    assert pacer.behind and len(yields) == 2
    pacer.lag(0.02)
    burst(pacer, clock)
    assert not pacer.behind and len(yields) == 3


def test_runs_are_counted_from_the_rows_times() -> None:
    assert runs(None) == 1  # one run's batch: one time for all its rows
    assert runs([5.0, 5.0, 6.0, 7.0, 7.0]) == 3


def test_the_poll_waits_for_the_connections_to_fill_to_100_kb(clock: list[float]) -> None:
    poll = Poll()
    clock[0] += 0.01
    assert poll.read(20 * 1024) == pytest.approx(0.05)  # 2 MB/s: 50 ms would be 100 KB
    clock[0] += 0.05
    assert poll.read(250 * 1024) == pytest.approx(0.02)  # 5 MB/s: at once, 20 ms
    # a pass right after another tells no rate: the sleep stands, the bytes count later
    clock[0] += 0.001
    assert poll.read(1024 * 1024) == pytest.approx(0.02)
    clock[0] += 0.009
    assert poll.read(0) == pytest.approx(pacing.POLL_MIN_S)  # 100 MB/s over those 10 ms


def test_the_poll_slows_down_gradually_when_traffic_falls(clock: list[float]) -> None:
    poll = Poll()
    clock[0] += 0.01
    poll.read(100 * 1024)  # 10 MB/s: 10 ms
    sleeps = []
    for _ in range(12):
        clock[0] += poll.seconds
        sleeps.append(poll.read(0))
    assert sleeps == sorted(sleeps)  # longer each time, never at once
    assert sleeps[0] == pytest.approx(0.01 / 0.7)
    assert sleeps[-1] == pacing.POLL_MAX_S  # idle: 20 wakeups a second
