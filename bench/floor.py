"""The floor under a tail-latency target for work beside the service on its core.

    python -m bench.floor [--duration 5] [--rounds 3] [--models ...]

Per model, single-sample v1 JSON at concurrency 1 from wrk (core 1), the service pinned to
core 0 with one worker, three settings in alternation, each in a fresh service:

- ``off``: the prediction log off: the service alone on its core;
- ``idle``: the log off, plus a busy loop on the service's core at ``SCHED_IDLE``, the
  lowest priority Linux has (it runs only when the core would otherwise idle, and a waking
  request preempts it at once): what ANY work sharing the core costs the service at least;
- ``on``: the log on (the default), on a fresh log;
- ``full``: the log on at its byte bound (8 MB here, filled past it by concurrent load
  first), so that every row written also prunes one: a busy service's steady state.

The p99 of ``idle`` ÷ ``off`` is the least that any co-located background work (a log
writer, a metrics agent, a sidecar) costs this service's p99 on this machine; the prediction
log's own ratio is printed beside it. Results go to bench/results/floor-latest.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.harness import (
    RESULTS,
    ROOT,
    SERVER_CORE,
    bodies,
    check_answer,
    path_for,
    sample_batch,
    start_server,
    stop,
    wrk,
)
from modelrepo import scan
from service.runtime.model import ServedModel

MODES = ("off", "idle", "on", "full")
#: The byte bound of the ``full`` setting, and the most time spent filling the log past it.
FULL_BYTES = 8 << 20
FILL_S = 40.0
_SPIN = "import os; os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\nwhile True: pass"


def measure(repository: Path, model: ServedModel, mode: str, seconds: float) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="nnserve-floor-"))
    port = 19500 + os.getpid() % 400
    if mode == "full":
        os.environ["NNSERVE_PREDICTION_LOG_MAX_BYTES"] = str(FULL_BYTES)
    try:
        server = start_server(
            repository, port, work / "server.log", mode in ("on", "full"), work / "data"
        )
    finally:
        os.environ.pop("NNSERVE_PREDICTION_LOG_MAX_BYTES", None)
    spin = None
    try:
        if mode == "idle":
            spin = subprocess.Popen(["taskset", "-c", SERVER_CORE, sys.executable, "-c", _SPIN])
            time.sleep(0.2)
        body, ctype, hlen = bodies(model, sample_batch(model, 1))["v1"]
        (work / "body").write_bytes(body)
        url = f"http://127.0.0.1:{port}{path_for(model.name, 'v1')}"
        check_answer(url, body, ctype, hlen)
        if mode == "full":
            fill(f"http://127.0.0.1:{port}", url, work / "body", ctype, hlen)
        wrk(url, work / "body", ctype, hlen, 1, 1.0)  # warm-up
        result = wrk(url, work / "body", ctype, hlen, 1, seconds)
        return {
            "rps": result["requests"] / (result["duration_us"] / 1e6),
            "p50": result["p50_us"] / 1e3,
            "p99": result["p99_us"] / 1e3,
        }
    finally:
        if spin is not None:
            spin.kill()
            spin.wait()
        stop(server)


def fill(base: str, url: str, body: Path, ctype: str, hlen: str) -> None:
    """Load until the writer has pruned (the log is past its bound), at most ``FILL_S``."""
    deadline = time.monotonic() + FILL_S
    while time.monotonic() < deadline:
        wrk(url, body, ctype, hlen, 16, 2.0)
        metrics = httpx.get(f"{base}/metrics").text
        pruned = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("nnserve_prediction_log_pruned_total")
        ]
        if pruned and pruned[0] > 0:
            return
    raise SystemExit(f"the log did not reach its {FULL_BYTES} byte bound in {FILL_S:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the settings")
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--models", nargs="*", help="default: every model")
    args = parser.parse_args()
    found = scan(args.repository)
    lines = [
        f"# Tail-latency floor, {time.strftime('%Y-%m-%d %H:%M')}: concurrency 1, single-sample "
        f"v1 JSON, service on core {SERVER_CORE} (1 worker), median of {args.rounds} "
        f"alternating rounds of {args.duration:g} s",
        "",
        "| model | log off p99 ms | idle busy loop p99 ms (x off) | log on p99 ms (x off) "
        "| log at its bound p99 ms (x off) | req/s off / idle / on / at bound |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.models or sorted(found):
        model = ServedModel.load(args.repository / name / str(found[name][-1]))
        runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                runs[mode].append(measure(args.repository, model, mode, args.duration))
        med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in runs[m][0]} for m in MODES}
        off = med["off"]["p99"]
        lines.append(
            f"| {name} | {off:.3f} | {med['idle']['p99']:.3f} ({med['idle']['p99'] / off:.2f}x) "
            f"| {med['on']['p99']:.3f} ({med['on']['p99'] / off:.2f}x) "
            f"| {med['full']['p99']:.3f} ({med['full']['p99'] / off:.2f}x) | "
            + " / ".join(f"{med[m]['rps']:,.0f}" for m in MODES)
            + " |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "floor-latest.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
