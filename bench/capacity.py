"""nnserve capacity benchmark: the memory and CPU figures a Kubernetes planner needs.

    python -m bench.capacity [--duration 5] [--models ...]

Per model, a service serving only that model (from a temporary repository holding a copy of
models/<name>: the repository follows no symbolic link out of itself):

1. memory: unpinned, ``NNSERVE_WORKERS=2`` then ``=1``, prediction log on (the default);
   after ``duration`` seconds of traffic, the RSS and PSS (/proc/<pid>/smaps_rollup) of the
   master, the log writer and each worker;
2. CPU: pinned to core 0, wrk on core 1, single-sample v1 JSON at concurrency 64, log on,
   then off: the user + system time of the whole process tree (master, workers, log writer;
   /proc/<pid>/stat) over the run ÷ the requests served, as CPU cores per 1,000 req/s.

Results go to bench/results/capacity-latest.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from bench.harness import (
    RESULTS,
    ROOT,
    SERVER_CORE,
    bodies,
    check_answer,
    log_total,
    path_for,
    sample_batch,
    start_server,
    stop,
    wrk,
)
from bench.procs import cpu_s, tree
from modelrepo import scan
from service.runtime.model import ServedModel

CONCURRENCY = 64
ROLES = ("master", "log writer", "worker")


def cpu_seconds(root: int) -> float:
    return cpu_s(list(tree(root)))


def memory(pid: int) -> tuple[float, float]:
    """RSS and PSS in MiB."""
    lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    kib = {key: int(value) for key, value, *_ in map(str.split, lines)}
    return kib["Rss:"] / 1024, kib["Pss:"] / 1024


@contextmanager
def serving(
    model: ServedModel,
    work: Path,
    log: bool,
    workers: int | None = None,
    cores: str | None = SERVER_CORE,
) -> Iterator[tuple[int, int, Callable[..., dict[str, float]]]]:
    """The service on ``work``'s repository: (pid, port, wrk with the single-sample v1 body)."""
    port = 20000 + os.getpid() % 1000
    server = start_server(
        work / "repository", port, work / "server.log", log, work / "data", cores, workers
    )
    try:
        body, ctype, hlen = bodies(model, sample_batch(model, 1))["v1"]
        (work / "body").write_bytes(body)
        url = f"http://127.0.0.1:{port}{path_for(model.name, 'v1')}"
        check_answer(url, body, ctype, hlen)
        yield server.pid, port, partial(wrk, url, work / "body", ctype, hlen, CONCURRENCY)
    finally:
        stop(server)


def memory_lines(model: ServedModel, workers: int, seconds: float, work: Path) -> list[str]:
    with serving(model, work, True, workers, None) as (pid, _, load):
        load(seconds, core=None)  # traffic on every worker first
        time.sleep(1.5)  # the writer has caught up
        found = sorted(tree(pid).items(), key=lambda item: (ROLES.index(item[1]), item[0]))
        figures = [(role, *memory(p)) for p, role in found]
    lines, n = [], 0
    for role, rss, pss in figures:
        n += role == "worker"
        label = f"worker {n}" if role == "worker" else role
        lines.append(f"| {model.name} | {workers} | {label} | {rss:,.1f} | {pss:,.1f} |")
    total = sum(pss for _, _, pss in figures)
    return [*lines, f"| {model.name} | {workers} | **total** | | **{total:,.1f}** |"]


def cpu_line(model: ServedModel, log: bool, seconds: float, work: Path) -> str:
    with serving(model, work, log) as (pid, port, load):
        load(min(1.0, seconds))  # warm-up
        time.sleep(1.0)  # the writer drains the warm-up's predictions
        dropped = log_total(port) if log else 0.0
        before = cpu_seconds(pid)
        result = load(seconds)
        time.sleep(1.0)  # ... and this run's, whose cost it is
        cpu = cpu_seconds(pid) - before
        dropped = log_total(port) - dropped if log else 0.0
    wall = result["duration_us"] / 1e6
    errors = sum(result[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
    return (
        f"| {model.name} | {'on' if log else 'off'} | {result['requests'] / wall:,.0f} | "
        f"{result['requests']:,.0f} | {cpu:.2f} | {cpu / wall:.2f} | "
        f"**{cpu / result['requests'] * 1000:.3f}** | {errors:.0f} | "
        f"{'' if not log else f'{dropped:,.0f}'} |"
    )


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((x.split(":", 1)[1].strip() for x in cpuinfo if x.startswith("model name")), "?")
    mem = next(x for x in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in x)
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {int(mem.split()[1]) / 2**20:.1f} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--models", nargs="*", help="default: every model")
    args = parser.parse_args()
    started = time.perf_counter()
    found = scan(ROOT / "models")
    memory_table = ["| model | workers | process | RSS MiB | PSS MiB |", "|---|---|---|---|---|"]
    cpu_table = [
        "| model | log | req/s | requests | service CPU s | cores busy | "
        "cores per 1,000 req/s | errors | log dropped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.models or sorted(found):
        work = Path(tempfile.mkdtemp(prefix="nnserve-capacity-"))
        try:
            shutil.copytree(ROOT / "models" / name, work / "repository" / name)
            model = ServedModel.load(work / "repository" / name / str(found[name][-1]))
            for workers in (2, 1):
                lines = memory_lines(model, workers, args.duration, work)
                print(*lines, sep="\n", flush=True)
                memory_table += lines
            for log in (True, False):
                cpu_table.append(cpu_line(model, log, args.duration, work))
                print(cpu_table[-1], flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(
        [
            f"# nnserve capacity {time.strftime('%Y%m%d-%H%M%S')}",
            "",
            f"{machine()}; one service per model, serving only that model; the run took "
            f"{time.perf_counter() - started:.0f} s.",
            "",
            f"## Memory (unpinned, prediction log on, after {args.duration:g} s of single-sample "
            f"v1 traffic at concurrency {CONCURRENCY}; /proc/<pid>/smaps_rollup)",
            "",
            *memory_table,
            "",
            f"## CPU (service pinned to core 0 with its default single worker, wrk on core 1; "
            f"single-sample v1 JSON at concurrency {CONCURRENCY} for {args.duration:g} s)",
            "",
            *cpu_table,
            "",
            "`service CPU s` = user + system time of master, workers and log writer over the "
            "run; `cores busy` = that ÷ the wrk run's duration; `cores per 1,000 req/s` = CPU "
            "seconds ÷ requests x 1000. Predictions the log dropped were not written, so "
            "their writer cost is missing from a log-on row that shows drops. Measured at "
            "saturation, where queued requests share onnxruntime runs (dynamic batching): "
            "a lightly loaded pod may spend somewhat more per request.",
            "",
            "How to size a pod: **CPU request** = expected req/s ÷ 1000 x `cores per 1,000 "
            "req/s` (log on, unless it is turned off), plus headroom for peaks; a limit at or "
            "above one core per worker keeps each worker's event loop from being throttled. "
            "**Memory**: PSS splits the pages processes share, so the total PSS is what the "
            "pod really holds; a limit of master + log writer + workers x per-worker PSS (from "
            "the 2-worker rows) plus 25-50 % headroom covers it, and the request can sit at "
            "the measured total. RSS counts shared pages once per process: summing it "
            "overstates. The cgroup also charges page cache and /dev/shm (the SQLite log, "
            "metrics files with several workers), so leave room for them too.",
        ]
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "capacity-latest.md").write_text(text + "\n")
    print()
    print(text)


if __name__ == "__main__":
    main()
