"""nnserve scaling benchmark: 1 worker process against 2, on every core, in one run.

    python -m bench.scaling [--duration 5] [--models ...]

Per model and prediction-log setting (off, then on: the default): the service
(`python -m service`) with ``NNSERVE_WORKERS=1``, then ``=2``, unpinned, single-sample v1
JSON at concurrency 64 from wrk (one thread), one onnxruntime intra-op thread per session.
On these 2 cores wrk shares the CPUs with the service, so its own CPU share is measured (its
user + system time ÷ wall time ÷ cores) and printed beside each row: what wrk uses, the
service cannot. Results go to bench/results/scaling-latest.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from bench.harness import (
    RESULTS,
    ROOT,
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

CONCURRENCY = 64


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    repository: Path, model: ServedModel, workers: int, log: bool, seconds: float, work: Path
) -> dict[str, float]:
    port = 19000 + os.getpid() % 1000
    server = start_server(
        repository, port, work / f"server-{workers}.log", log, work / "data", None, workers
    )
    try:
        body, ctype, hlen = bodies(model, sample_batch(model, 1))["v1"]
        body_file = work / "body"
        body_file.write_bytes(body)
        url = f"http://127.0.0.1:{port}{path_for(model.name, 'v1')}"
        check_answer(url, body, ctype, hlen)
        wrk(url, body_file, ctype, hlen, CONCURRENCY, 1.0, core=None)  # warm-up
        cpu, started = children_cpu(), time.perf_counter()
        result = wrk(url, body_file, ctype, hlen, CONCURRENCY, seconds, core=None)
        wall = time.perf_counter() - started
        wrk_cpu = children_cpu() - cpu  # wrk is the only child that exited meanwhile
    finally:
        stop(server)
    errors = sum(result[k] for k in ("non2xx", "connect", "read", "write", "timeout"))
    return {
        "req_s": result["requests"] / (result["duration_us"] / 1e6),
        "p50": result["p50_us"] / 1e3,
        "p99": result["p99_us"] / 1e3,
        "errors": errors,
        "wrk_share": wrk_cpu / wall / len(os.sched_getaffinity(0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--repository", type=Path, default=ROOT / "models")
    parser.add_argument("--models", nargs="*", help="default: every model")
    args = parser.parse_args()
    # one intra-op thread per session in both rows: the 1-worker row is the one-process
    # service as it was (its default now gives one worker every CPU's thread instead)
    os.environ["NNSERVE_SESSION_THREADS"] = "1"
    found = scan(args.repository)
    names = args.models or sorted(found)
    lines = [
        f"# nnserve scaling {time.strftime('%Y%m%d-%H%M%S')}",
        "",
        f"{len(os.sched_getaffinity(0))} CPUs, nothing pinned; single-sample v1 JSON at "
        f"concurrency {CONCURRENCY} (wrk, one thread, sharing the CPUs); the service's "
        "prediction log off, then on (the default; its writer process shares the CPUs too); "
        "one onnxruntime intra-op thread per session. "
        "`wrk CPU` = wrk's own share of all CPUs.",
        "",
        "| model | log | workers | req/s | vs 1 worker | p50 ms | p99 ms | errors | wrk CPU |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        model = ServedModel.load(args.repository / name / str(found[name][-1]))
        work = Path(tempfile.mkdtemp(prefix="nnserve-scaling-"))
        try:
            for log in (False, True):
                one = None
                for workers in (1, 2):
                    row = measure(args.repository, model, workers, log, args.duration, work)
                    one = one or row["req_s"]
                    line = (
                        f"| {name} | {'on' if log else 'off'} | {workers} | {row['req_s']:,.0f} "
                        f"| {row['req_s'] / one:.2f} | "
                        f"{row['p50']:.3f} | {row['p99']:.3f} | {row['errors']:.0f} | "
                        f"{row['wrk_share']:.0%} |"
                    )
                    print(line, flush=True)
                    lines.append(line)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling-latest.md").write_text(text)
    print()
    print(text)


if __name__ == "__main__":
    main()
