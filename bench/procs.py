"""The service's processes as the bench sees them in ``/proc``: which are its workers and
which its log writer, and the CPU they have used."""

from __future__ import annotations

import os
import time
from contextlib import suppress
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def stat(pid: int | str) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on: [1] is the parent, [11] utime, [12] stime."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def tree(root: int) -> dict[int, str]:
    """The service's processes, pid -> master, log writer or worker (the master's children
    that are not the writer)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, IndexError, ValueError):  # gone meanwhile
                children.setdefault(int(stat(entry.name)[1]), []).append(int(entry.name))
    found, todo = {root: "master"}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            found[pid] = "log writer" if b"predictionlog" in command else "worker"
            todo.append(pid)
    return found


def processes(root: int) -> dict[str, list[int]]:
    """The service's processes: ``workers`` (its own, the master among them) and ``writer``
    (the log writer)."""
    found: dict[str, list[int]] = {"workers": [], "writer": []}
    for pid, role in tree(root).items():
        found["writer" if role == "log writer" else "workers"].append(pid)
    return found


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (those gone count 0)."""
    ticks = 0
    for pid in pids:
        with suppress(OSError):
            fields = stat(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICK


def settle(pids: list[int], timeout: float = 10.0) -> None:
    """Wait until ``pids`` use under 5 % of a core over 0.2 s (or ``timeout``)."""
    deadline, last = time.monotonic() + timeout, cpu_s(pids)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = cpu_s(pids)
        if now - last < 0.01:
            return
        last = now
