"""Shared helpers of the endurance and fault tests: the service's process tree, its memory,
its metrics, and waiting for a condition with a bound."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.metrics_text import parse, value
from tests.support.server import Server, process_tree, wait_for

__all__ = ["metric", "process_tree", "rss_bytes", "wait_for"]


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def metric(server: Server, name: str, **labels: str) -> float:
    return value(parse(httpx.get(f"{server.url}/metrics", timeout=30).text), name, **labels)
