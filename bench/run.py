"""nnserve benchmark: the service against raw onnxruntime, on one core, in one run.

    python -m bench.run [--duration 5] [--models ...] [--quick] [--prediction-log both|on|off]
                        [--log-start near-bound|empty] [--cost-rounds 20] [--cost-latency-rounds 4]
                        [--cost-seconds 2]

1. raw onnxruntime in-process, pinned to core 0, one thread: batch 1 and batch 32;
2. the service's own JSON decode + encode, in-process (v1 and v2);
3. the service (`python -m service`) pinned to core 0 with `taskset`, and wrk pinned to core 1,
   for single-sample requests at concurrency 1, 16, 64 through v1 JSON, v2 JSON and v2 binary,
   and 32-sample requests at concurrency 16; once with the prediction log off and once on
   (sampling 1.0); the log starts at 90 % of its byte bound, so every log-on run is at its
   bound;
4. before those, the log's cost (``bench.logcost``): per model, a service with the log off and
   one with it on side by side (its log near its bound, filled with copies of the model's own
   rows), loaded in turn in short interleaved runs, throughput at concurrency 64 and p99 at
   concurrency 1, with the CPU each spends per request and bytes per prediction.

Every service figure is printed beside its ratio to raw onnxruntime on the same core in the
same run (samples/s ÷ raw samples/s at the same batch size). Results go to bench/results/ as
CSV and Markdown. wrk is used because it is a C, event-driven load generator: one core of it
drives far more requests per second than the server can answer, so the server is measured,
not the client (Python load generators top out at a few thousand requests per second).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench import logcost
from bench.harness import (
    RESULTS,
    ROOT,
    SERVER_CORE,
    Row,
    bodies,
    check_answer,
    log_total,
    path_for,
    sample_batch,
    start_server,
    stop,
    write_csv,
    wrk,
)
from bench.logsize import FILL_FRACTION, fill
from modelrepo import MODEL_FILE, scan
from service.context import RequestContext
from service.protocol import v1, v2
from service.runtime.model import ServedModel
from service.settings import Settings

# -- inputs ---------------------------------------------------------------------------------


# -- in-process measurements ----------------------------------------------------------------
def timed(fn, seconds: float) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def stats_row(model: str, scenario: str, batch: int, times: list[float]) -> Row:
    calls = len(times) / sum(times)
    return Row(
        model,
        scenario,
        batch,
        1,
        calls,
        calls * batch,
        1e3 * statistics.median(times),
        1e3 * float(np.percentile(times, 99)),
        0,
    )


def raw_ort(model: ServedModel, folder: Path, batch: int, seconds: float) -> Row:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
    )
    feeds = {model.input.name: sample_batch(model, batch)}
    names = model.output_names
    for _ in range(20):
        session.run(names, feeds)
    return stats_row(
        model.name, "raw-ort", batch, timed(lambda: session.run(names, feeds), seconds)
    )


def codec_cost(model: ServedModel, seconds: float) -> list[Row]:
    """Decode + encode of one single-sample request, as the service does it (no HTTP)."""
    batch = sample_batch(model, 1)
    outputs = model.run(batch)
    body_v1, body_v2 = bodies(model, batch)["v1"][0], bodies(model, batch)["v2-json"][0]

    def through_v1() -> None:
        groups, n = v1.decode(body_v1, model)
        v1.encode(model, groups, [outputs], RequestContext("id", 0.0).prediction_ids(n), "id")

    def through_v2() -> None:
        request = v2.decode(body_v2, None, model)
        v2.encode(model, request, outputs, "id")

    return [
        stats_row(model.name, "codec-v1", 1, timed(through_v1, seconds)),
        stats_row(model.name, "codec-v2", 1, timed(through_v2, seconds)),
    ]


# -- the service under wrk ------------------------------------------------------------------
#: (batch, concurrency) of each service scenario
CASES = [(1, 1), (1, 16), (1, 64), (32, 16)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--models", nargs="*", help="default: every model")
    parser.add_argument("--quick", action="store_true", help="1-second runs (smoke test)")
    parser.add_argument(
        "--prediction-log",
        choices=["both", "on", "off"],
        default="both",
        help="run the service with its prediction log off, then on (default), or one of them",
    )
    parser.add_argument(
        "--log-start",
        choices=["near-bound", "empty"],
        default="near-bound",
        help="the prediction log at 90%% of its byte bound before the first run (default: "
        "the steady state of a service that has run a while), or empty",
    )
    parser.add_argument(
        "--cost-rounds",
        type=int,
        default=20,
        help="off/on pairs of runs per cell of the log's cost at concurrency 64 (default 20)",
    )
    parser.add_argument(
        "--cost-latency-rounds",
        type=int,
        default=4,
        help="... and at concurrency 1, for p99 (default 4)",
    )
    parser.add_argument(
        "--cost-seconds", type=float, default=2.0, help="seconds per run of the log's cost"
    )
    args = parser.parse_args()
    seconds = 1.0 if args.quick else args.duration
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install wrk util-linux")
    found = scan(args.repository)
    names = args.models or sorted(found)
    os.sched_setaffinity(0, {int(SERVER_CORE)})  # in-process figures on the server's core
    models = {n: ServedModel.load(args.repository / n / str(found[n][-1])) for n in names}
    rows: list[Row] = []
    raw: dict[tuple[str, int], float] = {}
    for name, model in models.items():
        for batch in (1, 32):
            row = raw_ort(model, model.folder, batch, min(seconds, 3.0))
            raw[(name, batch)] = row.samples_s
            rows.append(row)
        rows += codec_cost(model, min(seconds, 2.0))
    os.sched_setaffinity(0, {0, 1})

    # The log's cost first (each model's log-on service with a log of its own near its bound,
    # ``logcost.measure``); then every scenario with the log off and on, each mode in a fresh
    # service process per model (no model's scenarios run in the wake of the previous model's
    # batch-32 flood), their log kept for the whole pass, so it grows as it would; it starts
    # near its bound, so that every log-on run prunes as it logs (steady state).
    modes = ["off", "on"] if args.prediction_log == "both" else [args.prediction_log]
    cost: list[str] = []
    bound = Settings().prediction_log_max_bytes
    fill_to = int(FILL_FRACTION * bound) if args.log_start == "near-bound" else None
    data = Path(tempfile.mkdtemp(prefix="nnserve-bench-data-"))
    try:
        if modes == ["off", "on"]:
            busy, quiet, run_s = (
                (2, 2, 1.0)
                if args.quick
                else (args.cost_rounds, args.cost_latency_rounds, args.cost_seconds)
            )
            rounds = {logcost.THROUGHPUT_AT: busy, logcost.LATENCY_AT: quiet}
            cost = logcost.table(*logcost.measure(args.repository, models, rounds, run_s, fill_to))
        if "on" in modes and fill_to is not None:
            filled = fill(data / "predictions.db", fill_to)
            print(f"prediction log filled to {FILL_FRACTION:.0%} of {bound / 1e6:,.0f} MB "
                  f"({filled:,} rows of 1 KB)", flush=True)  # fmt: skip
        for name, model in models.items():
            for mode in modes:
                rows += serve(args.repository, {name: model}, raw, seconds, mode, data)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    rows.sort(key=lambda r: (r.prediction_log != "", r.prediction_log, list(models).index(r.model)))
    write_results(rows, cost)


def serve(
    repository: Path,
    models: dict[str, ServedModel],
    raw: dict[tuple[str, int], float],
    seconds: float,
    mode: str,
    data: Path,
) -> list[Row]:
    """The service scenarios with the prediction log ``mode``."""
    rows: list[Row] = []
    port = 18000 + os.getpid() % 1000
    work = Path(tempfile.mkdtemp(prefix="nnserve-bench-"))
    server = start_server(repository, port, work / "server.log", mode == "on", data)
    try:
        for name, model in models.items():
            for batch, concurrency in CASES:
                for scenario, (body, ctype, hlen) in bodies(
                    model, sample_batch(model, batch)
                ).items():
                    body_file = work / f"{name}-{scenario}-{batch}.body"
                    body_file.write_bytes(body)
                    url = f"http://127.0.0.1:{port}{path_for(name, scenario)}"
                    check_answer(url, body, ctype, hlen)
                    wrk(url, body_file, ctype, hlen, concurrency, min(1.0, seconds))  # warm-up
                    dropped = log_total(port) if mode == "on" else None
                    result = wrk(url, body_file, ctype, hlen, concurrency, seconds)
                    if dropped is not None:
                        dropped = log_total(port) - dropped
                    req_s = result["requests"] / (result["duration_us"] / 1e6)
                    errors = int(
                        sum(result[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
                    )
                    row = Row(
                        name,
                        scenario,
                        batch,
                        concurrency,
                        req_s,
                        req_s * batch,
                        result["p50_us"] / 1e3,
                        result["p99_us"] / 1e3,
                        errors,
                        req_s * batch / raw[(name, batch)],
                        mode,
                        dropped,
                    )
                    rows.append(row)
                    print(f"log {mode:3s} {format_row(row)}", flush=True)
    finally:
        stop(server)
    return rows


def format_row(r: Row) -> str:
    ratio = "" if r.ratio_to_raw is None else f"{r.ratio_to_raw:6.3f}"
    return (
        f"{r.model:18s} {r.scenario:10s} b={r.batch:<3d} c={r.concurrency:<3d} "
        f"{r.req_s:10.0f} req/s {r.samples_s:10.0f} samples/s  p50 {r.p50_ms:7.3f} ms  "
        f"p99 {r.p99_ms:7.3f} ms  errors {r.errors}  ratio {ratio}"
    )


def write_results(rows: list[Row], cost: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    write_csv(rows, RESULTS / f"bench-{stamp}.csv", RESULTS / "latest.csv")
    lines = [
        f"# nnserve benchmark {stamp}",
        "",
        "Service pinned to core 0 (`taskset`; its prediction-log writer process too), wrk on "
        "core 1; raw onnxruntime and codec rows in-process on core 0, one thread. `ratio` = "
        "service samples/s ÷ raw onnxruntime samples/s at the same batch size, same run; "
        "`log` = the service's prediction log off or on (sampling 1.0). Each log starts "
        "at 90 % of its 1 GB bound, so retention prunes while every log-on run logs, as in a "
        "service's steady state: in the log's cost, a log per model filled with copies of its "
        "own rows (`pruned`: rows removed during the model's cost runs); in the table below, "
        "per model a fresh service with the log off, then one with it on, back to back, their "
        "log kept across the models of the run and filled with synthetic 1 KB rows.",
        "",
        *cost,
        "| model | scenario | log | batch | conc. | req/s | samples/s | p50 ms | p99 ms | "
        "errors | ratio | log dropped |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "" if r.ratio_to_raw is None else f"{r.ratio_to_raw:.3f}"
        lines.append(
            f"| {r.model} | {r.scenario} | {r.prediction_log} | {r.batch} | {r.concurrency} | "
            f"{r.req_s:,.0f} | {r.samples_s:,.0f} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | "
            f"{r.errors} | {ratio} | {'' if r.dropped is None else f'{r.dropped:,.0f}'} |"
        )
    text = "\n".join(lines) + "\n"
    (RESULTS / f"bench-{stamp}.md").write_text(text)
    (RESULTS / "latest.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
