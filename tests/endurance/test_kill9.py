"""``kill -9`` of the whole service (master, workers, log writer) while predictions and
feedback flow: the SQLite log is intact afterwards, everything acknowledged before the kill
is still there, and a new service on the same data folder serves and logs."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.endurance.tools import process_tree
from tests.support import samples
from tests.support.paths import MODELS
from tests.support.server import running_server

pytestmark = [pytest.mark.endurance, pytest.mark.server, pytest.mark.timeout(120)]
LOAD_S = 3.0  # of load before the kill


def run_folder(pid: int) -> Path | None:
    """The run folder ``python -m service`` made (it cannot remove it when killed)."""
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"NNSERVE_RUN_DIR="):
            return Path(item.split(b"=", 1)[1].decode())
    return None


def test_kill_9_of_the_whole_service_leaves_an_intact_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = data / "predictions.db"
    acknowledged: dict[str, str] = {}  # prediction id -> feedback label, answered 200
    statuses: list[int] = []
    stop = threading.Event()

    with running_server(
        MODELS, tmp_path, NNSERVE_DATA_DIR=str(data), NNSERVE_WORKERS="2",
        NNSERVE_LOG_LEVEL="warning",
    ) as server:  # fmt: skip
        ann = {"instances": samples.rows(4).tolist()}
        cnn = {"instances": samples.images(2).astype(int).tolist()}

        def load(model: str, body: dict[str, object], label: str, feedback: bool) -> None:
            with httpx.Client(timeout=10) as http:
                while not stop.is_set():
                    try:
                        r = http.post(f"{server.url}/v1/models/{model}:predict", json=body)
                        statuses.append(r.status_code)
                        if feedback and r.status_code == 200:
                            id = r.json()["predictions"][0]["id"]
                            f = http.post(
                                f"{server.url}/v1/models/{model}/feedback",
                                json={"id": id, "label": label},
                            )
                            if f.status_code == 200:
                                acknowledged[id] = label
                    except httpx.TransportError:
                        return  # the service is gone

        threads = [
            threading.Thread(target=load, args=("breast-cancer-ann", ann, "benign", True)),
            threading.Thread(target=load, args=("fashion-cnn", cnn, "Bag", True)),
            threading.Thread(target=load, args=("breast-cancer-ann", ann, "benign", False)),
            threading.Thread(target=load, args=("fashion-cnn", cnn, "Bag", False)),
        ]
        for thread in threads:
            thread.start()
        time.sleep(LOAD_S)
        tree = process_tree(server.process.pid)
        assert len(tree) >= 4, tree  # master, 2 workers, the writer
        run = run_folder(server.process.pid)
        # stopped first, so that no process sees another die and reacts; then killed
        for pid in tree:
            os.kill(pid, signal.SIGSTOP)
        before = len(acknowledged)
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
        server.process.wait(10)
        stop.set()
        for thread in threads:
            thread.join(15)
        if run is not None:
            shutil.rmtree(run, ignore_errors=True)
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert before >= 10, before

    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = dict(conn.execute("SELECT id, label FROM feedback").fetchall())
        predictions = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
        orphans = conn.execute("PRAGMA foreign_key_check").fetchall()
    lost = {id: label for id, label in acknowledged.items() if stored.get(id) != label}
    assert not lost, f"{len(lost)} acknowledged feedback labels lost: {list(lost)[:5]}"
    assert not orphans, orphans[:5]

    # a new service on the same data folder serves, logs, and still knows the old feedback
    with running_server(MODELS, tmp_path, NNSERVE_DATA_DIR=str(data)) as server:
        r = httpx.post(f"{server.url}/v1/models/breast-cancer-ann:predict", json=ann)
        assert r.status_code == 200 and r.headers["x-prediction-log"] == "logged"
        f = httpx.post(
            f"{server.url}/v1/models/breast-cancer-ann/feedback",
            json={"id": r.json()["predictions"][0]["id"], "label": "benign"},
        )
        assert f.json() == {"recorded": 1, "duplicates": 0}, f.text
        old, label = next(iter(acknowledged.items()))
        again = httpx.post(
            f"{server.url}/v1/models/{'fashion-cnn' if label == 'Bag' else 'breast-cancer-ann'}"
            "/feedback",
            json={"id": old, "label": label},
        )
        assert again.json() == {"recorded": 0, "duplicates": 1}, again.text
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        after = conn.execute("SELECT count(*) FROM predictions").fetchone()[0]
    assert after > predictions
    print(
        f"\nkilled {len(tree)} processes after {len(statuses)} requests; {len(acknowledged)}"
        f" feedback labels acknowledged, all {len(stored)} stored; {predictions} predictions"
        " in the log after the kill; integrity ok"
    )
