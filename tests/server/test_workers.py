"""Several worker processes behind one port (gunicorn), and several replicas sharing one
repository and one PostgreSQL prediction log: every contract of one process holds."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support import samples
from tests.support.metrics_text import parse, value
from tests.support.postgres import PostgresServer, require_psycopg, running_postgres
from tests.support.repo_tools import copy_models, publish_copy
from tests.support.samples import batch_for
from tests.support.server import Server, running_server, stop

ANN = "breast-cancer-ann"
TOKEN = "workers-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def instances(name: str = ANN, n: int = 1) -> dict[str, list[object]]:
    return {"instances": batch_for(name)[:n].tolist()}


def fresh(url: str, method: str = "GET", **kwargs: object) -> httpx.Response:
    """One request on a connection of its own (so that requests spread over the workers)."""
    with httpx.Client(timeout=10) as client:
        return client.request(method, url, **kwargs)  # type: ignore[arg-type]


def parallel(
    n: int, call: Callable[[int], httpx.Response], threads: int = 8
) -> list[httpx.Response]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(call, range(n)))


def workers_of(server: Server) -> set[int]:
    """The worker processes: the master's children other than the log writer."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    workers = set()
    for pid in (int(p) for p in children.read_text().split()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        if b"predictionlog" not in command:
            workers.add(pid)
    return workers


def wait_for_workers(server: Server, n: int, timeout: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while len(pids := workers_of(server)) != n:
        assert time.monotonic() < deadline, f"{len(pids)} workers, not {n}"
        time.sleep(0.05)
    return pids


def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return parse(fresh(f"{server.url}/metrics").text)


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Server]:
    root = copy_models(tmp_path, ANN, "vowels-lstm")
    with running_server(
        root, tmp_path, NNSERVE_WORKERS="2", NNSERVE_POLL_INTERVAL="0", NNSERVE_ADMIN_TOKEN=TOKEN
    ) as server:
        wait_for_workers(server, 2)
        for _ in range(100):  # every worker has loaded the models (any may answer)
            assert fresh(f"{server.url}/v2/health/ready").status_code == 200
        yield server


def test_metrics_are_exact_across_two_workers(two_workers: Server) -> None:
    server, n = two_workers, 200
    labels = {"protocol": "v1", "model": ANN, "version": "1"}
    before = scrape(server)
    answers = parallel(
        n, lambda _: fresh(f"{server.url}/v1/models/{ANN}:predict", "POST", json=instances())
    )
    assert [r.status_code for r in answers] == [200] * n
    # request ids carry a per-process prefix: both workers answered
    assert len({r.headers["x-request-id"][:8] for r in answers}) == 2
    after = scrape(server)

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **extra) - value(before, name, **extra)

    assert delta("nnserve_requests_total", **labels, code="200") == n
    assert delta("nnserve_request_duration_seconds_count", **labels) == n
    assert delta("nnserve_request_duration_seconds_bucket", **labels, le="+Inf") == n
    assert delta("nnserve_inferred_samples_total", model=ANN, version="1") == n
    assert delta("nnserve_queue_duration_seconds_count", model=ANN, version="1") == n
    for protocol in ("v1", "v2", "other"):
        assert value(after, "nnserve_requests_in_flight", protocol=protocol) == 0
    assert value(after, "nnserve_requests_in_flight", protocol="metrics") == 1  # this scrape
    # a gauge the same in every worker is not summed over them
    assert value(after, "nnserve_models_loaded") == 2
    assert value(after, "nnserve_model_info", model=ANN, version="1", **_info(after)) == 1
    assert value(after, "process_resident_memory_bytes") > 0


def _info(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, str]:
    for name, labels in samples:
        found = dict(labels)
        if name == "nnserve_model_info" and found.get("model") == ANN:
            return {k: v for k, v in found.items() if k not in ("model", "version")}
    raise AssertionError("no nnserve_model_info for the ANN")


def test_a_killed_worker_is_replaced_and_the_others_keep_serving(two_workers: Server) -> None:
    server = two_workers
    url = f"{server.url}/v1/models/{ANN}:predict"
    parallel(40, lambda _: fresh(url, "POST", json=instances()))
    before = value(scrape(server), "nnserve_requests_total", protocol="v1", model=ANN,
                   version="1", code="200")  # fmt: skip
    old = workers_of(server)
    victim = min(old)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    # the other worker answers meanwhile: readiness and predictions, no failures
    probes = [fresh(f"{server.url}/v2/health/ready") for _ in range(20)]
    assert [p.status_code for p in probes] == [200] * 20
    assert all(fresh(url, "POST", json=instances()).status_code == 200 for _ in range(20))
    replaced = wait_for_workers(server, 2, timeout=5.0)
    assert victim not in replaced and time.monotonic() - killed_at < 5.0
    # counters never go backwards: the dead worker's counts stay in the total
    after = value(scrape(server), "nnserve_requests_total", protocol="v1", model=ANN,
                  version="1", code="200")  # fmt: skip
    assert after >= before + 20
    assert server.process.poll() is None


def test_unload_and_load_take_effect_on_every_worker(two_workers: Server) -> None:
    server = two_workers
    url = f"{server.url}/v2/models/vowels-lstm/ready"
    assert fresh(f"{server.url}/v2/repository/models/vowels-lstm/unload", "POST",
                 headers=AUTH).status_code == 200  # fmt: skip
    answers = parallel(100, lambda _: fresh(url))
    assert [r.status_code for r in answers] == [503] * 100
    predict = parallel(
        20,
        lambda _: fresh(
            f"{server.url}/v1/models/vowels-lstm:predict", "POST", json=instances("vowels-lstm")
        ),
    )
    assert {r.status_code for r in predict} == {503}
    assert all("unloaded" in r.json()["error"] for r in predict)
    assert fresh(f"{server.url}/v2/repository/models/vowels-lstm/load", "POST",
                 headers=AUTH).status_code == 200  # fmt: skip
    answers = parallel(100, lambda _: fresh(url))
    assert [r.status_code for r in answers] == [200] * 100


def test_bad_input_is_rejected_the_same_way_by_every_worker(two_workers: Server) -> None:
    server = two_workers
    bad = {"instances": [[1.0, 2.0]]}
    answers = parallel(
        40, lambda _: fresh(f"{server.url}/v1/models/{ANN}:predict", "POST", json=bad)
    )
    assert {r.status_code for r in answers} == {400}
    assert len({r.json()["error"] for r in answers}) == 1
    assert "30" in answers[0].json()["error"]  # says what shape was expected


def test_feedback_joins_whichever_worker_served_the_prediction(two_workers: Server) -> None:
    server = two_workers
    predictions = parallel(
        40, lambda _: fresh(f"{server.url}/v1/models/{ANN}:predict", "POST", json=instances())
    )
    ids = [r.headers["x-request-id"] for r in predictions]
    labels = [r.json()["predictions"][0]["label"] for r in predictions]
    # each on a connection of its own: about half land on the other worker
    recorded = parallel(
        40,
        lambda i: fresh(
            f"{server.url}/v1/models/{ANN}/feedback",
            "POST",
            json={"id": ids[i], "label": labels[i] if i % 4 else "benign"},
        ),
    )
    assert [r.status_code for r in recorded] == [200] * 40, recorded[0].text
    wrong = sum(1 for i in range(0, 40, 4) if labels[i] != "benign")
    figures = {
        value(scrape(server), "nnserve_live_accuracy", model=ANN, version="1") for _ in range(10)
    }
    assert figures == {(40 - wrong) / 40}  # one figure, whichever worker is scraped
    total = scrape(server)
    counted = sum(
        value(total, "nnserve_feedback_total", model=ANN, version="1", outcome=o)
        for o in ("correct", "incorrect")
    )
    assert counted == 40


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_sigterm_drains_every_worker_and_loses_no_row(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    root = copy_models(tmp_path, "fashion-cnn")
    server_pg: PostgresServer | None = (
        request.getfixturevalue("postgres") if backend == "postgres" else None
    )
    # Every attempt must lose nothing; at least one must send SIGTERM while requests are still
    # being handled (on a loaded machine the metrics may answer only once all 16 are done).
    in_flight = [drain(root, tmp_path / "first", server_pg)]
    for attempt in range(2):
        if in_flight[-1] > 0:
            break
        in_flight.append(drain(root, tmp_path / f"again-{attempt}", server_pg))
    assert in_flight[-1] > 0, in_flight  # some were still being handled: the drain was tested


def drain(root: Path, work: Path, postgres: PostgresServer | None) -> float:
    """16 requests of 128 images on two workers, SIGTERM once all have reached a worker;
    every one answered and every row logged. How many were in flight at SIGTERM."""
    work.mkdir()
    store = {} if postgres is None else {"NNSERVE_PREDICTION_LOG_URL": postgres.new_database()}
    body = orjson.dumps({"instances": samples.images(128).astype(int).tolist()})
    headers = {"content-type": "application/json"}
    with running_server(
        root, work, NNSERVE_WORKERS="2", NNSERVE_MAX_BATCH_SIZE="128",
        NNSERVE_MAX_QUEUE_SIZE="4096", NNSERVE_INFERENCE_THREADS="1", **store,
    ) as server:  # fmt: skip
        wait_for_workers(server, 2)
        url = f"{server.url}/v1/models/fashion-cnn:predict"
        with ThreadPoolExecutor(16) as pool:  # a connection each: both workers get some
            futures = [
                pool.submit(fresh, url, "POST", content=body, headers=headers) for _ in range(16)
            ]
            # SIGTERM once every request has reached a worker, some still being handled. A
            # connection whose request has not reached a worker yet is closed at shutdown,
            # as HTTP allows for an idle one (what failed once in CI when the test slept a
            # fixed 0.5 s); the Deployment's preStop keeps new clients away from a pod.
            in_flight = wait_until_started(server, "fashion-cnn", 16)
            os.kill(server.process.pid, signal.SIGTERM)
            responses = [f.result() for f in futures]
        assert server.process.wait(30) == 0
    assert [r.status_code for r in responses] == [200] * 16
    assert len({r.headers["x-request-id"][:8] for r in responses}) == 2  # both workers
    assert logged_rows(store.get("NNSERVE_PREDICTION_LOG_URL"), work, server) == 16 * 128
    return in_flight


def wait_until_started(server: Server, model: str, n: int, timeout: float = 30.0) -> float:
    """Wait until n v1 requests to model have started on the workers (answered or in
    flight); returns how many are in flight then."""
    deadline = time.monotonic() + timeout
    while True:
        figures = scrape(server)
        in_flight = value(figures, "nnserve_requests_in_flight", protocol="v1")
        answered = sum(
            v for (name, labels), v in figures.items()
            if name == "nnserve_requests_total" and ("protocol", "v1") in labels
            and ("model", model) in labels
        )  # fmt: skip
        if in_flight + answered >= n:
            return in_flight
        assert time.monotonic() < deadline, f"{in_flight + answered} of {n} requests started"
        time.sleep(0.02)


def logged_rows(url: str | None, tmp_path: Path, server: Server) -> int:
    if url is None:
        database = tmp_path / f"data-{server.port}" / "predictions.db"
        with sqlite3.connect(database) as conn:
            (rows,) = conn.execute("SELECT count(*) FROM predictions").fetchone()
    else:
        import psycopg

        with psycopg.connect(url) as conn:
            (rows,) = conn.execute("SELECT count(*) FROM predictions").fetchone()  # type: ignore[misc]
    return int(rows)


# -- replicas -----------------------------------------------------------------------------
@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    require_psycopg()
    with running_postgres() as server:
        yield server


def test_two_replicas_behave_as_one_service(tmp_path: Path, postgres: PostgresServer) -> None:
    root = copy_models(tmp_path, ANN)
    url = postgres.new_database()
    shared = {"NNSERVE_PREDICTION_LOG_URL": url, "NNSERVE_POLL_INTERVAL": "0.5",
              "NNSERVE_WORKERS": "1", "NNSERVE_REPLICAS": "2"}  # fmt: skip
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with (
        running_server(root, tmp_path / "a", **shared) as a,
        running_server(root, tmp_path / "b", **shared) as b,
    ):
        made = [fresh(f"{a.url}/v1/models/{ANN}:predict", "POST", json=instances())
                for _ in range(10)]  # fmt: skip
        # feedback for A's predictions, given to B at once: they join
        for r in made:
            label = r.json()["predictions"][0]["label"]
            answer = fresh(f"{b.url}/v1/models/{ANN}/feedback", "POST",
                           json={"id": r.headers["x-request-id"], "label": label})  # fmt: skip
            assert answer.status_code == 200, answer.text
        for replica in (a, b):  # the same live accuracy whichever replica is asked
            assert value(scrape(replica), "nnserve_live_accuracy", model=ANN, version="1") == 1.0
        # a version published into the shared repository is served by both
        assert publish_copy(root, ANN) == 2
        published = time.monotonic()
        for replica in (a, b):
            while fresh(f"{replica.url}/v2/models/{ANN}/versions/2/ready").status_code != 200:
                assert time.monotonic() - published < 15, "version 2 not served"
                time.sleep(0.1)


def test_a_worker_crash_mid_request_gives_a_clean_error(two_workers: Server) -> None:
    """The request is in a worker when it dies: its connection was served a request
    already (so a worker accepted it), and its body is half sent when both workers are
    killed. (Killing them while a client sent request after request could fall between two
    requests: the client then reconnects to the fresh workers, with nothing to report.)"""
    server = two_workers
    body = orjson.dumps(instances(ANN, 4))
    half_sent, killed = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def halves() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        half_sent.set()
        killed.wait(10)
        yield body[len(body) // 2 :]

    def request() -> None:
        try:
            with httpx.Client(timeout=10) as client:
                assert client.get(f"{server.url}/v2/health/live").status_code == 200
                client.post(
                    f"{server.url}/v1/models/{ANN}:predict",
                    content=halves(),
                    headers={"content-type": "application/json"},
                )
        except httpx.TransportError as exc:
            errors.append(exc)

    thread = threading.Thread(target=request)
    thread.start()
    assert half_sent.wait(10), "the request never started"
    started = time.monotonic()
    for pid in workers_of(server):
        os.kill(pid, signal.SIGKILL)  # whichever one holds the connection
    killed.set()
    thread.join(15)
    assert not thread.is_alive(), "a client hung on a killed worker"
    assert errors and time.monotonic() - started < 10
    assert isinstance(
        errors[0],
        (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError),
    )
    wait_for_workers(server, 2, timeout=30)
    deadline = time.monotonic() + 30
    while fresh(f"{server.url}/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    stop(server.process, 30)


def test_replicas_refuse_a_sqlite_log_with_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "NNSERVE_REPLICAS": "3", "NNSERVE_DATA_DIR": str(tmp_path / "data")}
    env.pop("NNSERVE_PREDICTION_LOG_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "NNSERVE_REPLICAS=3 with the SQLite prediction log" in done.stderr
    assert "NNSERVE_PREDICTION_LOG_URL=postgresql://" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was written
