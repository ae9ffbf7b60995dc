"""Another process holds the SQLite log's write lock for seconds (``BEGIN EXCLUSIVE``): the
predictions meanwhile answer 200 without a latency spike (the writer waits, the rows wait in
its socket and the services' backlogs), and once the lock is released every row is written."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.endurance.tools import metric, wait_for
from tests.support import samples
from tests.support.paths import MODELS
from tests.support.server import running_server

pytestmark = [pytest.mark.endurance, pytest.mark.server, pytest.mark.timeout(120)]
HOLD_S = 3.0
P99_BOUND_S = 0.100  # stated in README: p99 while the log is locked

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("SELECT count(*) FROM predictions").fetchone()
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


def stored(db: Path) -> int:
    """Predictions committed (a WAL reader is not blocked by the other process's lock)."""
    with closing(sqlite3.connect(db, timeout=5)) as conn:
        return int(conn.execute("SELECT count(*) FROM predictions").fetchone()[0])


def test_a_database_locked_by_another_process_costs_no_request(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(
        MODELS, tmp_path, NNSERVE_DATA_DIR=str(data), NNSERVE_WORKERS="2",
        NNSERVE_LOG_LEVEL="warning",
    ) as server:  # fmt: skip
        url = f"{server.url}/v1/models/breast-cancer-ann:predict"
        body = {"instances": samples.rows(1).tolist()}
        results: list[tuple[float, float, int]] = []  # (start, seconds, status)
        ids: list[str] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    start = time.monotonic()
                    r = http.post(url, json=body)
                    results.append((start, time.monotonic() - start, r.status_code))
                    if r.status_code == 200:
                        ids.append(r.json()["predictions"][0]["id"])
                    time.sleep(0.002)  # steady traffic, not saturation: latency is the point

        db = data / "predictions.db"
        with httpx.Client() as http:  # warm both workers up
            for _ in range(50):
                assert http.post(url, json=body).status_code == 200
        written_before = metric(server, "nnserve_prediction_log_written_total")
        threads = [threading.Thread(target=client) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        with subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(db), str(HOLD_S)],
            stdout=subprocess.PIPE,
            text=True,
        ) as holder:
            try:
                assert holder.stdout is not None
                assert holder.stdout.readline().strip() == "locked"
                locked_at = time.monotonic()
                rows_at_lock = stored(db)
                # /metrics answers meanwhile (the writer's figures come late: its last ones)
                scrape = httpx.get(f"{server.url}/metrics", timeout=30)
                assert scrape.status_code == 200, scrape.text
                time.sleep(max(0.0, HOLD_S - 0.5 - (time.monotonic() - locked_at)))
                rows_in_lock = stored(db)  # the writer could not commit meanwhile
                assert holder.stdout.readline().strip() == "released"
                released_at = time.monotonic()
                assert holder.wait(10) == 0
            finally:
                if holder.poll() is None:
                    holder.kill()
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(30)
        total = len(ids) + 50
        waited = wait_for(
            lambda: (
                metric(server, "nnserve_prediction_log_written_total") >= written_before + len(ids)
            ),
            15,
        )
        f = httpx.post(
            f"{server.url}/v1/models/breast-cancer-ann/feedback",
            json={"id": ids[-1], "label": "benign"},
        )
        assert f.status_code == 200, f.text
        written = metric(server, "nnserve_prediction_log_written_total")
        dropped = metric(server, "nnserve_prediction_log_dropped_total")

    during = [s for start, s, _ in results if locked_at <= start <= released_at]
    p99 = float(np.percentile(during, 99))
    statuses = {s for *_, s in results}
    print(
        f"\nlocked {released_at - locked_at:.1f}s: {len(during)} requests meanwhile, p99"
        f" {p99 * 1000:.1f} ms, max {max(during) * 1000:.1f} ms; rows in the log"
        f" {rows_at_lock} -> {rows_in_lock} during the lock; {written:.0f} written in all,"
        f" {dropped:.0f} dropped; caught up {waited:.1f}s after the load"
    )
    assert statuses == {200}, statuses
    assert len(during) >= 100, len(during)
    assert p99 < P99_BOUND_S, p99
    assert rows_in_lock == rows_at_lock  # the lock did hold the writer up
    assert dropped == 0
    assert written == total  # every row written once the lock was gone
