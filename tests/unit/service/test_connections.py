"""The connection limits derived from the settings and the open-file limit
(``service.http.connections``); their behaviour is tested against a real service in
tests/server/test_slow_clients.py."""

from __future__ import annotations

import logging
import resource

import pytest

from service.http import connections
from service.http.connections import ConnectionLimits
from service.settings import Settings


def limits_at(
    monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, **settings: object
) -> tuple[ConnectionLimits, list[tuple[int, int]]]:
    """The limits with RLIMIT_NOFILE at soft / hard, and the soft limits the process set."""
    current = [soft, hard]
    raised: list[tuple[int, int]] = []

    def setrlimit(kind: int, values: tuple[int, int]) -> None:
        assert kind == resource.RLIMIT_NOFILE and values[1] == hard
        raised.append(values)
        current[0] = values[0]

    monkeypatch.setattr(connections.resource, "getrlimit", lambda kind: tuple(current))
    monkeypatch.setattr(connections.resource, "setrlimit", setrlimit)
    return ConnectionLimits.of(Settings(**settings)), raised  # type: ignore[arg-type]


def test_a_low_open_file_limit_bounds_the_cap_and_keeps_files_for_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits, raised = limits_at(monkeypatch, 1024, 1024)
    assert (limits.max_connections, limits.ceiling) == (797, 896)  # 1,024 - 128 for files
    assert raised == []  # the hard limit allows no more


def test_the_soft_limit_is_raised_as_far_as_the_default_cap_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits, raised = limits_at(monkeypatch, 1024, 1 << 20)
    assert raised == [(4096 + 512 + 128, 1 << 20)]
    assert (limits.max_connections, limits.ceiling) == (4096, 4096 + 512)
    limits, raised = limits_at(monkeypatch, 2048, 3000)  # up to the hard limit only
    assert raised == [(3000, 3000)]
    assert limits.max_connections + (limits.max_connections // 8) <= 3000 - 128


def test_a_cap_the_descriptors_cannot_hold_is_lowered_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "nnserve.connections"):
        limits, _ = limits_at(monkeypatch, 1024, 1024, max_connections=5000)
    assert limits.max_connections == 797
    assert "NNSERVE_MAX_CONNECTIONS=5000" in caplog.text
    limits, _ = limits_at(monkeypatch, 1024, 1024, max_connections=100)
    assert (limits.max_connections, limits.ceiling) == (100, 116)  # headroom: at least 16


def test_timeouts_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    limits, _ = limits_at(
        monkeypatch, 1 << 16, 1 << 16, header_timeout=2, body_timeout=3, keepalive_max_age=0
    )
    assert (limits.header_timeout, limits.body_timeout) == (2, 3)
    assert limits.keepalive_max_age == float("inf")  # 0: no limit
    assert limits.keepalive_timeout == 5
