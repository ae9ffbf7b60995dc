"""What a scrape adds in prometheus_client's multiprocess mode (several worker processes):
the workers' files without the series of retired versions, and the whole service's process
figures (one worker's would describe that worker only)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from service.observability.metrics import Collected

#: Gauges about one model version, shown only while it serves.
_VERSION_GAUGES = frozenset(
    ("nnserve_queue_depth", "nnserve_model_info", "nnserve_model_load_duration_seconds")
)


class ServingOnly:
    """Multiprocess mode keeps a retired version's gauge values in the workers' files (it
    cannot remove them): drop those of versions the scraped worker no longer serves."""

    def __init__(self, inner: MultiProcessCollector, collected: Collected) -> None:
        self.inner = inner
        self.collected = collected

    def collect(self) -> Iterator[Metric]:
        quality = self.collected.quality
        serving = {(m, str(v)) for m, v in quality.serving} if quality else set()
        for metric in self.inner.collect():  # type: ignore[no-untyped-call]
            if metric.name in _VERSION_GAUGES:
                metric.samples = [
                    s for s in metric.samples
                    if (s.labels.get("model"), s.labels.get("version")) in serving
                ]  # fmt: skip
            yield metric


class ServiceProcesses:
    """``process_cpu_seconds_total`` and ``process_resident_memory_bytes`` of the whole
    service (the process manager, its workers and the log writer), where a single process's
    would describe one worker. The CPU total restarts lower when a worker is replaced (what
    ``rate()`` handles as a counter reset)."""

    def collect(self) -> Iterator[Metric]:
        parent = os.getppid()
        pids = [parent, *_children(parent)]
        cpu = rss = 0.0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cpu += (int(fields[11]) + int(fields[12])) / _TICKS
            rss += int(fields[21]) * _PAGE
        yield CounterMetricFamily(
            "process_cpu_seconds", "CPU time of the service's processes, in seconds", cpu
        )
        yield GaugeMetricFamily(
            "process_resident_memory_bytes", "Resident memory of the service's processes", rss
        )


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]
