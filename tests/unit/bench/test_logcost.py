"""make bench's prediction-log cost: the interleaving, the table's arithmetic, and the CPU
read from /proc for a real process tree."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.logcost import MAX_STDERR, Cell, Load, Run, order, table
from bench.procs import cpu_s, processes, settle


def test_runs_alternate_in_abba_order() -> None:
    assert order(3) == ["off", "on", "on", "off", "off", "on"]
    assert order(2).count("off") == order(2).count("on") == 2


def run(requests: int, p99: float, workers: float = 1.0, writer: float = 0.0) -> Run:
    return Run(requests, 2.0, p99, workers, writer)


def test_the_table_gives_throughput_over_all_runs_and_median_p99s() -> None:
    busy = Cell("ann", "v1", 64)
    busy.runs["off"] = [run(20_000, 9.0, 1.8), run(24_000, 9.0, 2.0)]  # 11,000 req/s over 4 s
    busy.runs["on"] = [run(18_000, 9.0, 1.8, 0.1), run(20_400, 9.0, 1.9, 0.1)]  # 9,600 req/s
    quiet = Cell("ann", "v1", 1)
    quiet.runs["off"] = [run(700, 0.30), run(700, 0.40), run(700, 0.35)]
    quiet.runs["on"] = [run(700, 0.60), run(700, 0.50), run(700, 0.77)]
    lines = table([busy, quiet], {"ann": (220.0, 12.0, 5000.0)})
    (row,) = [line for line in lines if line.startswith("| ann ")]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # 1 - 9,600 / 11,000 = 12.7 %; the pairs: 10.0 % and 15.0 %
    # standard error: stdev(10 %, 15 %) / sqrt(2) = 2.5 points
    assert cells[2:6] == ["11,000", "9,600", "12.7% ± 2.5 (10.0% to 15.0%)", "2"]
    # CPU per request: 3.8 s / 44,000 off; 3.9 s (0.2 s the writer's) / 38,400 on
    assert cells[6:8] == ["86.4", "101.6 (5.2)"]
    # p99 medians 0.35 and 0.60: 1.71; pairs 2.00, 1.25, 2.20
    assert cells[8:11] == ["0.350", "0.600", "1.71 (1.25 to 2.20)"]
    assert cells[11:] == ["12", "220", "5,000"]
    # the pairs per cell at each concurrency
    assert "2 off/on pairs of runs per cell at concurrency 64 (more, up to 4," in lines[2]
    assert "), 3 at 1," in lines[2]
    assert table([busy], {}) == []  # no p99 cell: no row, no table


class Scripted(Load):
    """A Load whose runs come from a list (req/s of each run in turn), not from wrk."""

    def __init__(self, rates: dict[str, list[float]]) -> None:
        super().__init__({}, {}, Path("body"), "application/json", "", 2.0)
        self.rates = {mode: iter(values) for mode, values in rates.items()}
        self.done = 0

    def run(self, mode: str, concurrency: int) -> Run:
        self.done += 1
        return run(round(2.0 * next(self.rates[mode])), 1.0)


def test_a_cell_whose_pairs_disagree_gets_more_of_them_up_to_twice_the_rounds() -> None:
    # steady: every pair costs 10 %, the standard error is 0: warm-up + 4 pairs, no more
    steady = Scripted({"off": [1000.0] * 20, "on": [900.0] * 20})
    cell = steady.cell("ann", "v1", 64, 4)
    assert steady.done == 2 + 8 and len(cell.runs["on"]) == 4
    assert cell.stderr() == 0 and abs(cell.cost() - 0.10) < 1e-9
    # noisy: pairs of 0 % and 30 % in turn (standard error 7.5 points for 4 pairs, above
    # MAX_STDERR whatever their number): two pairs more at a time up to 8
    off = [1000.0] * 20
    on = [1000.0 if i % 2 else 700.0 for i in range(20)]
    noisy = Scripted({"off": off, "on": on})
    cell = noisy.cell("ann", "v1", 64, 4)
    assert len(cell.runs["off"]) == len(cell.runs["on"]) == 8 and noisy.done == 2 + 16
    assert cell.stderr() > MAX_STDERR
    # at concurrency 1 (p99) the rounds asked for, however noisy
    quiet = Scripted({"off": off, "on": on})
    assert len(quiet.cell("ann", "v1", 1, 4).runs["off"]) == 4


def test_the_cpu_of_a_service_and_its_writer_is_read_from_proc() -> None:
    """A process with a child named like the log writer: each found, its CPU counted, and
    settle() returns once both are idle."""
    child = (
        "import subprocess, sys, time; "
        "w = subprocess.Popen([sys.executable, '-c', "
        "'import time\\nend = time.process_time() + 0.3\\nwhile time.process_time() < end: pass\\n"
        "time.sleep(30)', 'predictionlog']); time.sleep(30)"
    )
    parent = subprocess.Popen([sys.executable, "-c", child])
    try:
        deadline = time.monotonic() + 10
        found = processes(parent.pid)
        while not found["writer"] and time.monotonic() < deadline:
            time.sleep(0.05)
            found = processes(parent.pid)
        assert found["workers"] == [parent.pid] and len(found["writer"]) == 1
        settle(found["writer"])  # until its 0.3 s of busy work is done
        assert cpu_s(found["writer"]) >= 0.25
        assert cpu_s(found["workers"]) < 0.25
        assert cpu_s([2**22 + 1]) == 0  # no such process
    finally:
        for pid in processes(parent.pid)["writer"]:
            subprocess.run(["kill", str(pid)], check=False)
        parent.kill()
        parent.wait()
