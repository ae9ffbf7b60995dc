"""The prediction log's cost in the bench: two services at once, runs interleaved.

A service with the log off and one with it on run side by side, both pinned to the server's
core, and wrk loads one of them at a time: per model, protocol and concurrency (64 for
throughput, 1 for p99), pairs of short runs in ABBA order (off on, on off, ...; more of them
at concurrency 64, whose cost is the figure with the thinner margin),
so that both modes see the same moments of a machine whose speed drifts from second to
second (single 5-second runs a minute apart moved by 20-60 points here; one unchanged
service, loaded alone at concurrency 64 in back-to-back 1-second runs, served 5,733 to 10,800
requests a second with 0.96-0.98 of its core each second, so a cell's figure is only as
steady as the number of its runs: twenty pairs by default). After each run the
bench waits until the loaded service's processes are idle again (its writer has committed
and pruned), so no run pays for the previous one's work.

Per cell: the throughput of each mode over all its runs (requests ÷ seconds), the median
p99, the range of the pairs' own figures, and CPU per request (from ``/proc``) of the
service's processes with the log off and on, the writer's share apart: where the cost goes.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median, stdev

from bench.harness import bodies, check_answer, path_for, sample_batch, start_server, stop, wrk
from bench.logsize import bytes_per_prediction, log_figures, seed_and_fill
from bench.procs import cpu_s, processes, settle
from service.runtime.model import ServedModel

#: Concurrency the throughput cost is read at, and the one the p99 ratio is read at.
THROUGHPUT_AT, LATENCY_AT = 64, 1
#: The two services of a cell, the log-off one first (on its port; the log-on one on the next).
MODES = ("off", "on")
#: A throughput cost whose standard error (from its pairs) is above this gets more pairs, two
#: at a time, up to twice the rounds asked for: a cell run while the machine's speed swings
#: is measured for longer rather than reported from the same few seconds as a steady one.
MAX_STDERR = 0.025


@dataclass
class Run:
    requests: int
    seconds: float
    p99_ms: float
    workers_s: float  # CPU seconds of the service's own processes during the run
    writer_s: float  # ... and of its log writer

    @property
    def req_s(self) -> float:
        return self.requests / self.seconds


@dataclass
class Cell:
    """One model, protocol and concurrency: its off and on runs, the n-th of each a pair."""

    model: str
    scenario: str
    concurrency: int
    runs: dict[str, list[Run]] = field(default_factory=lambda: {"off": [], "on": []})

    def req_s(self, mode: str) -> float:
        runs = self.runs[mode]
        return sum(r.requests for r in runs) / sum(r.seconds for r in runs)

    def cost(self) -> float:
        return 1 - self.req_s("on") / self.req_s("off")

    def pair_costs(self) -> list[float]:
        return [1 - b.req_s / a.req_s for a, b in zip(*self.runs.values(), strict=True)]

    def stderr(self) -> float:
        """Standard error of the cost, from its pairs' own costs (inf with under two)."""
        costs = self.pair_costs()
        return stdev(costs) / math.sqrt(len(costs)) if len(costs) > 1 else math.inf

    def p99(self, mode: str) -> float:
        return median(r.p99_ms for r in self.runs[mode])

    def cpu_us(self, mode: str, part: str = "all") -> float:
        """CPU µs per request of the service's processes (``part``: workers, writer, all)."""
        runs = self.runs[mode]
        seconds = sum(
            (r.workers_s if part != "writer" else 0) + (r.writer_s if part != "workers" else 0)
            for r in runs
        )
        return 1e6 * seconds / sum(r.requests for r in runs)


def order(rounds: int) -> list[str]:
    """ABBA: off on, on off, off on, ... (a drift within a round hits both modes alike)."""
    return [m for r in range(rounds) for m in (("off", "on") if r % 2 == 0 else ("on", "off"))]


def measure(
    repository: Path,
    models: dict[str, ServedModel],
    rounds: dict[int, int],
    seconds: float,
    fill_to: int | None,
) -> tuple[list[Cell], dict[str, tuple[float, float, float]]]:
    """The cells of every model (``rounds``: pairs of runs per concurrency), and per model
    (bytes per prediction, dropped, pruned). Each model's log-on service has a log of its
    own, filled (unless ``fill_to`` is None) to ``fill_to`` bytes with copies of the rows it
    logs for that model: retention then prunes about one of the model's own predictions per
    prediction logged, as in a service that serves it. (One log kept across the models made
    each model prune the rows the models before it left: co2-lstm pruned 1.6 million of the
    ANN's 203-byte predictions while it logged about 0.8 million of its 566 bytes, and its
    writer spent 10.9 µs per request against 7-8 on a log of 1 KB rows.)"""
    cells: list[Cell] = []
    logged: dict[str, tuple[float, float, float]] = {}
    work = Path(tempfile.mkdtemp(prefix="nnserve-bench-cost-"))
    port = 19000 + os.getpid() % 1000  # the log-off service's; the log-on one's is next
    try:
        for name, model in models.items():
            data = work / f"{name}-data"
            scenarios = bodies(model, sample_batch(model, 1))
            if fill_to is not None:
                filled = seed_and_fill(repository, port + 1, work, data, name, scenarios, fill_to)
                print(f"log cost: {name}'s log filled to {fill_to / 1e6:,.0f} MB with "
                      f"{filled:,} copies of its own predictions", flush=True)  # fmt: skip
            servers = {
                "off": start_server(repository, port, work / "off.log", False, work / "off-data"),
                "on": start_server(repository, port + 1, work / "on.log", True, data),
            }
            try:
                pids = {mode: processes(server.pid) for mode, server in servers.items()}
                before = log_figures(port + 1)
                for concurrency in (THROUGHPUT_AT, LATENCY_AT):
                    for scenario, body in scenarios.items():
                        load = Load.of(pids, port, work, name, scenario, body, seconds)
                        cells.append(load.cell(name, scenario, concurrency, rounds[concurrency]))
                        print(f"log cost {format_cell(cells[-1])}", flush=True)
                after = log_figures(port + 1)
                logged[name] = (
                    bytes_per_prediction(data / "predictions.db", name),
                    after["dropped"] - before["dropped"],
                    after["pruned"] - before["pruned"],
                )
            finally:
                stop(*servers.values())
            shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cells, logged


@dataclass
class Load:
    """One request body and its URL on each service: what a cell's runs send."""

    pids: dict[str, dict[str, list[int]]]  # per mode: the service's processes
    urls: dict[str, str]
    body_file: Path
    ctype: str
    hlen: str
    seconds: float

    @classmethod
    def of(
        cls,
        pids: dict[str, dict[str, list[int]]],
        port: int,
        work: Path,
        model: str,
        scenario: str,
        body: tuple[bytes, str, str],
        seconds: float,
    ) -> Load:
        """``body`` (with its content type and header length) to ``model`` by ``scenario``'s
        path on the log-off service at ``port`` and the log-on one at the next port; each
        checked to answer it."""
        content, ctype, hlen = body
        body_file = work / f"{model}-{scenario}.body"
        body_file.write_bytes(content)
        path = path_for(model, scenario)
        urls = {mode: f"http://127.0.0.1:{port + i}{path}" for i, mode in enumerate(MODES)}
        for url in urls.values():
            check_answer(url, content, ctype, hlen)
        return cls(pids, urls, body_file, ctype, hlen, seconds)

    def cell(self, model: str, scenario: str, concurrency: int, rounds: int) -> Cell:
        """A warm-up run of each mode, then ``rounds`` pairs in ABBA order; at
        ``THROUGHPUT_AT``, two pairs more at a time while the cost's standard error is above
        ``MAX_STDERR`` (up to twice ``rounds``: the rule looks at the pairs' spread, never at
        the figure)."""
        cell = Cell(model, scenario, concurrency)
        for mode in MODES:
            self.run(mode, concurrency)
        for mode in order(rounds):
            cell.runs[mode].append(self.run(mode, concurrency))
        while (
            concurrency == THROUGHPUT_AT
            and cell.stderr() > MAX_STDERR
            and len(cell.runs["off"]) < 2 * rounds
        ):
            for mode in order(2):
                cell.runs[mode].append(self.run(mode, concurrency))
        return cell

    def run(self, mode: str, concurrency: int) -> Run:
        """One wrk run against one service, then wait until that service is idle."""
        pids = self.pids[mode]
        start = cpu_s(pids["workers"]), cpu_s(pids["writer"])
        result = wrk(
            self.urls[mode], self.body_file, self.ctype, self.hlen, concurrency, self.seconds
        )
        settle(pids["workers"] + pids["writer"])
        return Run(
            int(result["requests"]),
            result["duration_us"] / 1e6,
            result["p99_us"] / 1e3,
            cpu_s(pids["workers"]) - start[0],
            cpu_s(pids["writer"]) - start[1],
        )


def format_cell(c: Cell) -> str:
    return (
        f"{c.model:18s} {c.scenario:10s} c={c.concurrency:<3d} off {c.req_s('off'):8,.0f} req/s "
        f"on {c.req_s('on'):8,.0f} ({c.cost():6.1%} ± {100 * c.stderr():.1f}, "
        f"{len(c.runs['off'])} pairs)  p99 off {c.p99('off'):.3f} on "
        f"{c.p99('on'):.3f} ms  CPU µs/req off {c.cpu_us('off'):.1f} on {c.cpu_us('on'):.1f} "
        f"(writer {c.cpu_us('on', 'writer'):.1f})"
    )


def table(cells: list[Cell], logged: dict[str, tuple[float, float, float]]) -> list[str]:
    """The cost table (Markdown lines): per model and protocol, throughput at concurrency 64
    and p99 at concurrency 1, on against off, and where the CPU goes."""
    by_key = {(c.model, c.scenario, c.concurrency): c for c in cells}

    def fewest(concurrency: int) -> int:  # the pairs asked for (a cell may have more)
        return min((len(c.runs["off"]) for c in cells if c.concurrency == concurrency), default=0)

    least = fewest(THROUGHPUT_AT)
    lines = [
        "## The prediction log's cost (same run; targets: cost ≤ 15 %, p99 ratio ≤ 2)",
        "",
        "Per model, two services side by side on core 0, one with the log off and one with "
        "it on (its log near its bound, filled with copies of the model's own rows: "
        "retention prunes about one of them per prediction logged), loaded in turn: "
        f"{least} off/on pairs of runs per cell at concurrency {THROUGHPUT_AT} (more, up to "
        f"{2 * least}, where the cost's standard error was above {100 * MAX_STDERR:g} "
        f"points: `pairs`), {fewest(LATENCY_AT)} at {LATENCY_AT}, in ABBA order. "
        "Throughput over all of a mode's runs, ± the standard error from the pairs; p99 the "
        "median of its runs; in brackets the lowest and highest of the pairs. CPU: the "
        "service's processes per request at concurrency 64, "
        "the log writer's share in brackets.",
        "",
        "| model | scenario | c=64 req/s off | on | cost | pairs | CPU µs/req off "
        "| on (writer) | p99 c=1 off ms | on ms | p99 ratio | dropped | bytes per prediction "
        "| pruned |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, scenario, concurrency), c in by_key.items():
        fast = by_key.get((model, scenario, LATENCY_AT))
        if concurrency != THROUGHPUT_AT or fast is None:
            continue
        costs = c.pair_costs()
        ratios = [b.p99_ms / a.p99_ms for a, b in zip(*fast.runs.values(), strict=True)]
        size, dropped, pruned = logged.get(model, (0.0, 0.0, 0.0))
        lines.append(
            f"| {model} | {scenario} | {c.req_s('off'):,.0f} | {c.req_s('on'):,.0f} | "
            f"{c.cost():.1%} ± {100 * c.stderr():.1f}{_spread(costs, '.1%')} | {len(costs)} | "
            f"{c.cpu_us('off'):.1f} | "
            f"{c.cpu_us('on'):.1f} ({c.cpu_us('on', 'writer'):.1f}) | {fast.p99('off'):.3f} | "
            f"{fast.p99('on'):.3f} | {fast.p99('on') / fast.p99('off'):.2f}"
            f"{_spread(ratios, '.2f')} | {dropped:,.0f} | {size:,.0f} | {pruned:,.0f} |"
        )
    return [*lines, ""] if len(lines) > 6 else []


def _spread(values: list[float], spec: str) -> str:
    return f" ({min(values):{spec}} to {max(values):{spec}})" if len(values) > 1 else ""
