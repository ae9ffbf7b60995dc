"""Explanations cannot starve predictions: a real service (one worker) answers a closed loop
of predictions alone, then the same loop while more clients than the explain queue admits
ask for costly explanations (fashion-cnn, 1-pixel patches: 785 samples each). Predictions
keep their throughput and latency within the stated bounds, every one answers 200, and the
surplus explanations get 503 with Retry-After. ``-s`` prints the figures."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson

from tests.support import samples
from tests.support.paths import MODELS
from tests.support.server import running_server

PHASE_S = 4.0
PREDICTORS = 3
EXPLAINERS = 6  # the queue admits 1 running + 2 waiting
#: the bounds: predictions under explain load keep at least this share of their throughput
#: alone, and their p99 stays under this many milliseconds
THROUGHPUT_SHARE = 0.5
P99_MS = 100.0

ROW = orjson.dumps({"instances": samples.rows(1).tolist()})
IMAGE = orjson.dumps({"instances": samples.images(1).tolist(), "parameters": {"patch_size": 1}})


def _loop(
    url: str, body: bytes, until: float, record: Callable[[float, httpx.Response], None]
) -> None:
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < until:
            started = time.perf_counter()
            answer = client.post(url, content=body)
            record(time.perf_counter() - started, answer)


def _phase(base: str, explaining: bool) -> tuple[list[float], list[int], dict[int, int], int]:
    """(prediction latencies, their statuses, explain statuses, explain 503s with Retry-After)"""
    latencies: list[float] = []
    statuses: list[int] = []
    explained: dict[int, int] = {}
    retry_after = [0]
    lock = threading.Lock()

    def predicted(seconds: float, answer: httpx.Response) -> None:
        with lock:
            latencies.append(seconds)
            statuses.append(answer.status_code)

    def explain(seconds: float, answer: httpx.Response) -> None:
        with lock:
            explained[answer.status_code] = explained.get(answer.status_code, 0) + 1
            if answer.status_code == 503 and answer.headers.get("retry-after") == "1":
                retry_after[0] += 1
        if answer.status_code == 503:
            time.sleep(0.1)  # a client honouring Retry-After waits 1 s: keep the queue full

    until = time.monotonic() + PHASE_S
    threads = [
        threading.Thread(
            target=_loop,
            args=(f"{base}/v1/models/breast-cancer-ann:predict", ROW, until, predicted),
        )
        for _ in range(PREDICTORS)
    ]
    if explaining:
        threads += [
            threading.Thread(
                target=_loop, args=(f"{base}/v1/models/fashion-cnn:explain", IMAGE, until, explain)
            )
            for _ in range(EXPLAINERS)
        ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, statuses, explained, retry_after[0]


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] * 1000


def test_predictions_keep_their_latency_while_explanations_saturate_their_queue(
    tmp_path: Path,
) -> None:
    with running_server(
        MODELS,
        tmp_path,
        NNSERVE_WORKERS="1",
        NNSERVE_SESSION_THREADS="1",
        NNSERVE_PREDICTION_LOG="false",
        NNSERVE_EXPLAIN_THREADS="1",
        NNSERVE_EXPLAIN_QUEUE="2",
    ) as server:
        _phase(server.url, explaining=False)  # warm-up
        alone, alone_codes, _, _ = _phase(server.url, explaining=False)
        mixed, mixed_codes, explained, retry_after = _phase(server.url, explaining=True)
    rate_alone, rate_mixed = len(alone) / PHASE_S, len(mixed) / PHASE_S
    print(
        f"\npredictions alone: {rate_alone:.0f} req/s, p50 {statistics.median(alone) * 1000:.2f} "
        f"ms, p99 {_p99(alone):.2f} ms; with explanations: {rate_mixed:.0f} req/s "
        f"({rate_mixed / rate_alone:.0%}), p50 {statistics.median(mixed) * 1000:.2f} ms, p99 "
        f"{_p99(mixed):.2f} ms; explanations {explained} ({explained.get(200, 0) / PHASE_S:.1f}"
        f"/s answered), {retry_after} 503s with Retry-After"
    )
    assert set(alone_codes) == set(mixed_codes) == {200}
    assert explained.get(200, 0) > 0 and explained.get(503, 0) > 0
    assert retry_after == explained[503]
    assert set(explained) <= {200, 503}
    assert rate_mixed >= THROUGHPUT_SHARE * rate_alone
    assert _p99(mixed) <= P99_MS
