"""The prediction log with a real service: bounded on disk under sustained load while no
request fails and feedback on recent predictions keeps joining; what responses say."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import samples
from tests.support.metrics_text import parse, value
from tests.support.paths import MODELS
from tests.support.server import running_server, wait_for, writer_pid

pytestmark = pytest.mark.timeout(180)
BOUND = 3_000_000  # bytes: about 900 fashion-cnn predictions
TOLERANCE = 0.10  # the file may pass the bound by one commit window's rows, stated in README


def file_size(db: Path) -> int:
    return db.stat().st_size if db.exists() else 0


def test_the_log_stays_within_its_byte_bound_under_load_and_feedback_still_joins(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    db = data / "predictions.db"
    with running_server(
        MODELS,
        tmp_path,
        NNSERVE_DATA_DIR=str(data),
        NNSERVE_PREDICTION_LOG_MAX_BYTES=str(BOUND),
        NNSERVE_LOG_LEVEL="warning",
    ) as server:
        url = f"{server.url}/v1/models/fashion-cnn:predict"
        body = {"instances": samples.images(1).astype(int).tolist()}
        statuses: list[int] = []
        ids: list[str] = []
        sizes: list[int] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    r = http.post(url, json=body)
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        ids.append(r.json()["predictions"][0]["id"])

        def watch() -> None:
            while not stop.is_set():
                sizes.append(file_size(db))
                time.sleep(0.05)

        threads = [threading.Thread(target=client) for _ in range(6)]
        threads.append(threading.Thread(target=watch))
        for thread in threads:
            thread.start()
        started = time.monotonic()
        joined = 0
        while time.monotonic() - started < 12:  # bounded: 12 s of load
            time.sleep(1.0)
            if ids:  # feedback on a prediction answered a moment ago joins while pruning runs
                r = httpx.post(
                    f"{server.url}/v1/models/fashion-cnn/feedback",
                    json={"id": ids[-1], "label": "Bag"},
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                joined += r.json()["recorded"]
        stop.set()
        for thread in threads:
            thread.join(30)

        def settled() -> bool:  # the writer commits the last rows a linger window later
            counts = parse(httpx.get(f"{server.url}/metrics").text)
            done = value(counts, "nnserve_prediction_log_written_total")
            return done + value(counts, "nnserve_prediction_log_dropped_total") >= len(statuses)

        wait_for(settled, timeout=15)
        metrics = parse(httpx.get(f"{server.url}/metrics").text)
        written = value(metrics, "nnserve_prediction_log_written_total")
        pruned = value(metrics, "nnserve_prediction_log_pruned_total")
        assert value(metrics, "nnserve_prediction_log_limit", kind="bytes") == BOUND
        assert value(metrics, "nnserve_prediction_log_dropped_total") == 0
        # the oldest predictions are gone: feedback for them says why
        first = httpx.post(
            f"{server.url}/v1/models/fashion-cnn/feedback", json={"id": ids[0], "label": "Bag"}
        )
        assert first.status_code == 404 and "retention" in first.json()["error"], first.text

    assert set(statuses) == {200} and len(statuses) > 1000  # no request failed
    assert joined >= 10
    assert written == len(statuses) and pruned > written / 2  # many times the bound went by
    stored_bytes = len(statuses) * samples.images(1).nbytes
    assert stored_bytes > 5 * BOUND, stored_bytes
    assert max(sizes) <= BOUND * (1 + TOLERANCE), (max(sizes), BOUND)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_responses_say_whether_their_predictions_were_logged(tmp_path: Path) -> None:
    rows = samples.rows(2).tolist()
    with running_server(MODELS, tmp_path, NNSERVE_PREDICTION_LOG_SAMPLE="0") as server:
        r = httpx.post(
            f"{server.url}/v1/models/breast-cancer-ann:predict", json={"instances": rows}
        )
        assert r.headers["x-prediction-log"] == "not-logged"
    with running_server(MODELS, tmp_path) as server:
        r = httpx.post(
            f"{server.url}/v1/models/breast-cancer-ann:predict", json={"instances": rows}
        )
        assert r.headers["x-prediction-log"] == "logged"
        v2 = {
            "inputs": [
                {"name": "features", "shape": [2, 30], "datatype": "FP32",
                 "data": np.ravel(rows).tolist()}
            ]
        }  # fmt: skip
        r = httpx.post(f"{server.url}/v2/models/breast-cancer-ann/infer", json=v2)
        assert r.headers["x-prediction-log"] == "logged"
        # logged means joinable at once, on the very next call
        answer = httpx.post(
            f"{server.url}/v1/models/breast-cancer-ann/feedback",
            json={"id": f"{r.json()['id']}-1", "label": "benign"},
        )
        assert answer.json() == {"recorded": 1, "duplicates": 0}


def test_a_killed_writer_is_replaced_and_logging_resumes(tmp_path: Path) -> None:
    with running_server(MODELS, tmp_path) as server:
        url = f"{server.url}/v1/models/breast-cancer-ann:predict"
        body = {"instances": samples.rows(1).tolist()}
        assert httpx.post(url, json=body).status_code == 200
        first = writer_pid(server.process.pid)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        statuses = []
        while time.monotonic() < deadline:
            r = httpx.post(url, json=body)
            statuses.append(r.status_code)
            try:
                if (
                    writer_pid(server.process.pid) != first
                    and r.headers["x-prediction-log"] == "logged"
                ):
                    break
            except AssertionError:
                pass
            time.sleep(0.1)
        assert set(statuses) == {200}
        assert r.headers["x-prediction-log"] == "logged"
        answer = httpx.post(
            f"{server.url}/v1/models/breast-cancer-ann/feedback",
            json={"id": r.json()["id"], "label": "benign"},
        )
        assert answer.status_code == 200, answer.text
        assert "exited" in server.logs() and "starting it again" in server.logs()
