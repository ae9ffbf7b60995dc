"""nnserve benchmark: the service against raw onnxruntime, on one core, in one run.

    python -m bench.run [--duration 5] [--models ...] [--quick] [--prediction-log both|on|off]
                        [--log-start near-bound|empty]

1. raw onnxruntime in-process, pinned to core 0, one thread: batch 1 and batch 32;
2. the service's own JSON decode + encode, in-process (v1 and v2);
3. the service (`python -m service`) pinned to core 0 with `taskset`, and wrk pinned to core 1,
   for single-sample requests at concurrency 1, 16, 64 through v1 JSON, v2 JSON and v2 binary,
   and 32-sample requests at concurrency 16; once with the prediction log off and once on
   (sampling 1.0), so its cost (throughput, p99, bytes per prediction) comes from one run; the
   log starts at 90 % of its byte bound, so every log-on run is at its bound.

Every service figure is printed beside its ratio to raw onnxruntime on the same core in the
same run (samples/s ÷ raw samples/s at the same batch size). Results go to bench/results/ as
CSV and Markdown. wrk is used because it is a C, event-driven load generator: one core of it
drives far more requests per second than the server can answer, so the server is measured,
not the client (Python load generators top out at a few thousand requests per second).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from bench.logsize import FILL_FRACTION, bytes_per_prediction, fill
from modelrepo import MODEL_FILE, scan
from service.context import RequestContext
from service.protocol import v1, v2
from service.runtime.model import ServedModel
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SERVER_CORE, CLIENT_CORE = "0", "1"


@dataclass
class Row:
    model: str
    scenario: str  # raw-ort, codec, v1, v2-json, v2-binary
    batch: int
    concurrency: int
    req_s: float
    samples_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    ratio_to_raw: float | None = None
    prediction_log: str = ""  # off / on (service rows)
    dropped: float | None = None  # predictions the log dropped during the run (log on)


# -- inputs ---------------------------------------------------------------------------------
def sample_batch(model: ServedModel, n: int) -> np.ndarray:
    """``n`` real test samples (the reference batch from model.json, repeated)."""
    tensor = model.card.reference[0].inputs[0]
    base = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
    return np.resize(base, (n, *base.shape[1:])).astype(np.float32)


def bodies(model: ServedModel, batch: np.ndarray) -> dict[str, tuple[bytes, str, str]]:
    """scenario -> (body, content type, Inference-Header-Content-Length)."""
    name = model.input.name
    instances = batch.astype(int) if model.input.min_value is not None else batch
    as_v1 = json.dumps({"instances": instances.tolist()}).encode()
    as_v2 = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "data": batch.ravel().tolist(),
                }
            ]
        }
    ).encode()
    raw = batch.astype("<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": model.card.outputs[-1].name, "parameters": {"binary_data": True}}],
        }
    ).encode()
    return {
        "v1": (as_v1, "application/json", ""),
        "v2-json": (as_v2, "application/json", ""),
        "v2-binary": (head + raw, "application/octet-stream", str(len(head))),
    }


def path_for(model: str, scenario: str) -> str:
    return f"/v1/models/{model}:predict" if scenario == "v1" else f"/v2/models/{model}/infer"


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
def start_server(
    repository: Path,
    port: int,
    log: Path,
    prediction_log: bool,
    data: Path | None = None,
    cores: str | None = SERVER_CORE,
    workers: int | None = None,
) -> subprocess.Popen[bytes]:
    """``python -m service`` on ``cores`` (taskset; None: every core), ready when returned."""
    env = {
        "NNSERVE_PREDICTION_LOG": "true" if prediction_log else "false",
        "NNSERVE_DATA_DIR": str(data or log.parent / "data"),
        **os.environ,
        "NNSERVE_PORT": str(port),
        "NNSERVE_HOST": "127.0.0.1",
        "NNSERVE_MODEL_REPOSITORY": str(repository),
        "NNSERVE_LOG_LEVEL": "warning",
        "NNSERVE_POLL_INTERVAL": "0",
        "NNSERVE_INFERENCE_THREADS": "1",
        **({"NNSERVE_WORKERS": str(workers)} if workers else {}),
    }
    pinned = ["taskset", "-c", cores] if cores else []
    process = subprocess.Popen(
        [*pinned, sys.executable, "-m", "service"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the service did not start; see {log}")


def wrk(
    url: str,
    body_file: Path,
    content_type: str,
    header_length: str,
    concurrency: int,
    seconds: float,
    core: str | None = CLIENT_CORE,
) -> dict[str, float]:
    env = {
        **os.environ,
        "BODY_FILE": str(body_file),
        "CONTENT_TYPE": content_type,
        "HEADER_LENGTH": header_length,
    }
    done = subprocess.run(
        [
            *(["taskset", "-c", core] if core else []),
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "bench" / "post.lua"),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("{"))
    return json.loads(line)  # type: ignore[no-any-return]


def check_answer(url: str, body: bytes, content_type: str, header_length: str) -> None:
    headers = {"Content-Type": content_type}
    if header_length:
        headers["Inference-Header-Content-Length"] = header_length
    r = httpx.post(url, content=body, headers=headers)
    if r.status_code != 200:
        raise SystemExit(f"{url}: {r.status_code} {r.text[:300]}")


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

    # Off and on back to back per model (a fair A/B on a machine whose speed drifts), each in
    # a fresh service process: no model's scenarios run in the wake of the previous model's
    # batch-32 flood. The log's database is kept for the whole run, so it grows as it would;
    # it starts near its bound, so that every log-on run prunes as it logs (steady state).
    modes = ["off", "on"] if args.prediction_log == "both" else [args.prediction_log]
    stored: dict[str, tuple[float, float]] = {}
    data = Path(tempfile.mkdtemp(prefix="nnserve-bench-data-"))
    try:
        if "on" in modes and args.log_start == "near-bound":
            bound = Settings().prediction_log_max_bytes
            filled = fill(data / "predictions.db", int(FILL_FRACTION * bound))
            print(f"prediction log filled to {FILL_FRACTION:.0%} of {bound / 1e6:,.0f} MB "
                  f"({filled:,} rows of 1 KB)", flush=True)  # fmt: skip
        for name, model in models.items():
            for mode in modes:
                served, stored_now = serve(args.repository, {name: model}, raw, seconds, mode, data)
                rows += served
                stored.update(stored_now)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    rows.sort(key=lambda r: (r.prediction_log != "", r.prediction_log, list(models).index(r.model)))
    write_results(rows, stored)


def serve(
    repository: Path,
    models: dict[str, ServedModel],
    raw: dict[tuple[str, int], float],
    seconds: float,
    mode: str,
    data: Path,
) -> tuple[list[Row], dict[str, tuple[float, float]]]:
    """The service scenarios with the prediction log ``mode``; with it on, also per model the
    bytes per prediction logged and the rows retention pruned meanwhile."""
    rows: list[Row] = []
    stored: dict[str, tuple[float, float]] = {}
    port = 18000 + os.getpid() % 1000
    work = Path(tempfile.mkdtemp(prefix="nnserve-bench-"))
    server = start_server(repository, port, work / "server.log", mode == "on", data)
    try:
        for name, model in models.items():
            before = log_figures(port) if mode == "on" else None
            cases = [(1, c) for c in (1, 16, 64)] + [(32, 16)]
            for batch, concurrency in cases:
                for scenario, (body, ctype, hlen) in bodies(
                    model, sample_batch(model, batch)
                ).items():
                    body_file = work / f"{name}-{scenario}-{batch}.body"
                    body_file.write_bytes(body)
                    url = f"http://127.0.0.1:{port}{path_for(name, scenario)}"
                    check_answer(url, body, ctype, hlen)
                    wrk(url, body_file, ctype, hlen, concurrency, min(1.0, seconds))  # warm-up
                    dropped = dropped_so_far(port) if mode == "on" else None
                    result = wrk(url, body_file, ctype, hlen, concurrency, seconds)
                    if dropped is not None:
                        dropped = dropped_so_far(port) - dropped
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
            if before is not None:
                after = log_figures(port)
                size = bytes_per_prediction(data / "predictions.db", name)
                dropped = after["dropped"] - before["dropped"]
                stored[name] = (size, after["pruned"] - before["pruned"])
                print(
                    f"log on  {name}: {size:,.0f} bytes per prediction, {dropped:.0f} dropped, "
                    f"{stored[name][1]:,.0f} pruned"
                )
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows, stored


def dropped_so_far(port: int, counter: str = "dropped") -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    line = next(
        x for x in text.splitlines() if x.startswith(f"nnserve_prediction_log_{counter}_total ")
    )
    return float(line.split()[-1])


def log_figures(port: int) -> dict[str, float]:
    """The prediction log's drops and prunes, once the writer has committed and reported
    everything sent so far (it measures about once a second)."""
    time.sleep(3.0)
    return {"dropped": dropped_so_far(port), "pruned": dropped_so_far(port, "pruned")}


def format_row(r: Row) -> str:
    ratio = "" if r.ratio_to_raw is None else f"{r.ratio_to_raw:6.3f}"
    return (
        f"{r.model:18s} {r.scenario:10s} b={r.batch:<3d} c={r.concurrency:<3d} "
        f"{r.req_s:10.0f} req/s {r.samples_s:10.0f} samples/s  p50 {r.p50_ms:7.3f} ms  "
        f"p99 {r.p99_ms:7.3f} ms  errors {r.errors}  ratio {ratio}"
    )


def write_csv(rows: Sequence[Any], *paths: Path) -> None:
    """Dataclass rows, one CSV file each path (bench.grpc writes its rows with it too)."""
    for path in paths:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)


def write_results(rows: list[Row], stored: dict[str, tuple[float, float]]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    write_csv(rows, RESULTS / f"bench-{stamp}.csv", RESULTS / "latest.csv")
    lines = [
        f"# nnserve benchmark {stamp}",
        "",
        "Service pinned to core 0 (`taskset`; its prediction-log writer process too), wrk on "
        "core 1; raw onnxruntime and codec rows in-process on core 0, one thread. `ratio` = "
        "service samples/s ÷ raw onnxruntime samples/s at the same batch size, same run; "
        "`log` = the service's prediction log off or on (sampling 1.0). Per model, a fresh "
        "service with the log off, then one with it on, back to back; the log's database is "
        "kept across the models of a run, and starts at 90 % of its 1 GB bound (synthetic 1 KB "
        "rows), so retention prunes while every log-on run logs, as in a service's steady "
        "state (`pruned`: rows it removed during the model's log-on runs).",
        "",
        *log_cost(rows, stored),
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


def log_cost(rows: list[Row], stored: dict[str, tuple[float, float]]) -> list[str]:
    """What the prediction log costs, from the same run: throughput at concurrency 64 and p99
    at concurrency 1, log on against log off, per model and protocol (single samples)."""
    by = {(r.model, r.scenario, r.batch, r.concurrency, r.prediction_log): r for r in rows}
    lines = [
        "## The prediction log's cost (same run; targets: cost ≤ 15 %, p99 ratio ≤ 2)",
        "",
        "| model | scenario | c=64 req/s off | on | cost | dropped at c=64 | p99 c=1 off ms "
        "| on ms | p99 ratio | bytes per prediction | pruned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, scenario, batch, concurrency, log), off in by.items():
        on = by.get((model, scenario, batch, concurrency, "on"))
        if (batch, concurrency, log) != (1, 64, "off") or on is None:
            continue
        off_1 = by[(model, scenario, 1, 1, "off")]
        on_1 = by[(model, scenario, 1, 1, "on")]
        lines.append(
            f"| {model} | {scenario} | {off.req_s:,.0f} | {on.req_s:,.0f} | "
            f"{1 - on.req_s / off.req_s:.1%} | {on.dropped or 0:,.0f} | "
            f"{off_1.p99_ms:.3f} | {on_1.p99_ms:.3f} | "
            f"{on_1.p99_ms / off_1.p99_ms:.2f} | {stored.get(model, (0, 0))[0]:,.0f} | "
            f"{stored.get(model, (0, 0))[1]:,.0f} |"
        )
    return [*lines, ""] if len(lines) > 4 else []


if __name__ == "__main__":
    main()
