"""How many worker processes and threads the CPUs allow (standard library only: read by
``python -m service`` before anything that imports prometheus_client)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset set)."""
    return len(os.sched_getaffinity(0))


def worker_count(setting: int | str) -> int:
    """``auto`` (one worker per usable CPU) or a number, at least 1."""
    if setting == "auto":
        return usable_cpus()
    try:
        return max(1, int(setting))
    except ValueError:
        raise ValueError(f"workers must be a number or auto, not {setting!r}") from None
