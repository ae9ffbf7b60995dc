"""The prediction log's volume fills up: requests never notice, the rows that cannot be
written are counted as dropped, and writing resumes by itself once there is space again.

Root only: the data folder is a small tmpfs mounted for the test (always unmounted)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.endurance.tools import metric, wait_for
from tests.support import samples
from tests.support.paths import MODELS
from tests.support.server import running_server

pytestmark = [
    pytest.mark.endurance,
    pytest.mark.server,
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root"),
]
SMALL, LARGE = "6m", "64m"
IMAGES = 8  # per request: 8 fashion-cnn rows of about 4 KB each
DROPPED, WRITTEN = "nnserve_prediction_log_dropped_total", "nnserve_prediction_log_written_total"


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode != 0:  # root without CAP_SYS_ADMIN (an unprivileged container)
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        # lazily: a process still holding the database open must not keep the mount alive
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_volume_drops_rows_not_requests_and_writing_resumes(tmp_path: Path) -> None:
    with (
        tmpfs(tmp_path / "data", SMALL) as data,
        running_server(
            MODELS,
            tmp_path,
            NNSERVE_DATA_DIR=str(data),
            NNSERVE_WORKERS="2",
            NNSERVE_LOG_LEVEL="warning",
        ) as server,
    ):
        url = f"{server.url}/v1/models/fashion-cnn:predict"
        body = {"instances": samples.images(IMAGES).astype(int).tolist()}
        statuses: list[int] = []

        def predict(http: httpx.Client) -> httpx.Response:
            r = http.post(url, json=body)
            statuses.append(r.status_code)
            return r

        with httpx.Client(timeout=30) as http:
            # 1. fill the volume: 6 MB hold fewer than 1,500 rows; bounded at 1,000 requests
            for _ in range(1000):
                predict(http)
                if len(statuses) % 20 == 0 and metric(server, DROPPED):
                    break
            full_at = len(statuses)
            dropped = metric(server, DROPPED)
            assert dropped > 0, f"no row dropped after {full_at} requests of {IMAGES} images"
            # 2. while full: every request still answers, the drops keep being counted
            for _ in range(100):
                predict(http)
            wait_for(lambda: metric(server, DROPPED) > dropped, 10)
            written_full = metric(server, WRITTEN)
            df_full = subprocess.run(["df", "-k", str(data)], capture_output=True, text=True)
            # 3. space returns: writing resumes by itself, new predictions join feedback
            subprocess.run(["mount", "-o", f"remount,size={LARGE}", str(data)], check=True)
            resumed = time.monotonic()
            for _ in range(30):
                predict(http)
            wait_for(
                lambda: metric(server, WRITTEN) >= written_full + 30 * IMAGES,
                15,
            )
            resume_s = time.monotonic() - resumed
            last = predict(http)
            feedback = http.post(
                f"{server.url}/v1/models/fashion-cnn/feedback",
                json={"id": last.json()["predictions"][-1]["id"], "label": "Bag"},
            )
            assert feedback.status_code == 200, feedback.text
            assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
            dropped_end = metric(server, DROPPED)
            written_end = metric(server, WRITTEN)
        logs = server.logs()
        with closing(sqlite3.connect(data / "predictions.db")) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            stored = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]

    print(
        f"\nvolume full after {full_at} requests ({full_at * IMAGES} rows);"
        f" {written_full:.0f} written until then, {dropped_end:.0f} dropped in all;"
        f" writing resumed within {resume_s:.1f}s; {written_end:.0f} written, {stored} stored\n"
        f"{df_full.stdout}"
    )
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert written_end + dropped_end == len(statuses) * IMAGES  # every row accounted for
    assert "Traceback" not in logs, logs[-3000:]
    assert "database or disk is full" in logs  # the writer says why it drops
    assert "starting it again" not in logs  # the writer never crashed
