"""A corrupted model pushed while the service is loading and serving: refused with its
reason (metrics, repository index), the old version serving with no failed request
meanwhile, and the version picked up once its files are made whole.

tests/server/test_reload.py covers versions published atomically with a wrong sha256 or a
wrong reference; here the files change under the loader (a version folder written in place,
chunk by chunk, while the service polls it every 50 ms) and a truncated graph whose card
matches it (the sha256 check passes, onnxruntime refuses it)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import httpx
import pytest

from modelrepo import MODEL_FILE, publish, read_card
from tests.endurance.tools import metric, wait_for
from tests.support import samples
from tests.support.paths import MODELS
from tests.support.repo_tools import copy_models
from tests.support.server import Server, running_server

pytestmark = [pytest.mark.endurance, pytest.mark.server, pytest.mark.timeout(120)]
MODEL = "fashion-cnn"
TOKEN = "endurance-token"
CHUNK = 64 << 10  # bytes written at a time, ...
CHUNK_PAUSE = 0.03  # ... every this many seconds: about 15 chunks, 0.45 s per file


def failures(server: Server, reason: str) -> float:
    return metric(server, "nnserve_model_load_failures_total", model=MODEL, reason=reason)


def index(server: Server) -> dict[str, tuple[str, str]]:
    r = httpx.post(
        f"{server.url}/v2/repository/index", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert r.status_code == 200, r.text
    return {e["version"]: (e["state"], e["reason"]) for e in r.json() if e["name"] == MODEL}


def write_slowly(path: Path, data: bytes) -> None:
    """In place, the way a copy over the network or a slow disk writes it."""
    with path.open("wb") as f:
        for start in range(0, len(data), CHUNK):
            f.write(data[start : start + CHUNK])
            f.flush()
            time.sleep(CHUNK_PAUSE)


def test_corrupted_versions_pushed_mid_load_are_refused_while_the_old_one_serves(
    tmp_path: Path,
) -> None:
    root = copy_models(tmp_path, MODEL)
    source = MODELS / MODEL / "1"
    good = (source / MODEL_FILE).read_bytes()
    card = read_card(source)
    body = {"instances": samples.images(1).astype(int).tolist()}
    results: list[tuple[int, str]] = []  # (status, version)
    stop = threading.Event()

    with running_server(
        root, tmp_path, NNSERVE_POLL_INTERVAL="0.05", NNSERVE_WORKERS="2",
        NNSERVE_ADMIN_TOKEN=TOKEN, NNSERVE_LOG_LEVEL="warning",
    ) as server:  # fmt: skip

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    r = http.post(f"{server.url}/v1/models/{MODEL}:predict", json=body)
                    version = str(r.json().get("model_version")) if r.status_code == 200 else ""
                    results.append((r.status_code, version))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            # 1. version 2 written in place: its card first, then a graph that grows chunk by
            # chunk while the workers poll, and stops at half its size (a copy that broke off)
            v2 = root / MODEL / "2"
            v2.mkdir()
            (v2 / "model.json").write_text(card.model_copy(update={"version": 2}).to_json())
            write_slowly(v2 / MODEL_FILE, good[: len(good) // 2])
            wait_for(lambda: index(server).get("2", ("", ""))[0] == "UNAVAILABLE", 10)
            # 2. version 3 published atomically: a truncated graph whose card matches it
            truncated = good[: len(good) * 3 // 4]
            digest = hashlib.sha256(truncated).hexdigest()
            publish(
                root,
                MODEL,
                lambda folder: (folder / MODEL_FILE).write_bytes(truncated),
                lambda v: card.model_copy(update={"version": v, "onnx_sha256": digest}),
            )
            wait_for(lambda: failures(server, "session_error") >= 2, 10)  # once per worker
            time.sleep(0.5)  # ten more polls: refused versions are not retried
            refused = index(server)
            sha_failures = failures(server, "sha256_mismatch")
            session_failures = failures(server, "session_error")
            assert {v for s, v in results if s == 200} == {"1"}
            # 3. version 2's graph made whole in place: tried again, and served
            write_slowly(v2 / MODEL_FILE, good)
            wait_for(lambda: all(v == "2" for _, v in results[-8:]), 15)
            time.sleep(0.3)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        after = index(server)
        ready = httpx.get(f"{server.url}/v2/health/ready").status_code
        logs = server.logs()

    statuses = {s: sum(1 for r, _ in results if r == s) for s in {r for r, _ in results}}
    print(
        f"\n{len(results)} requests {statuses}; refusals: sha256_mismatch {sha_failures:.0f},"
        f" session_error {session_failures:.0f}; index {refused}"
    )
    assert statuses.keys() == {200}, statuses
    assert len(results) > 100
    assert refused["1"] == ("READY", "")
    assert refused["2"][0] == "UNAVAILABLE" and "sha256" in refused["2"][1], refused
    assert refused["3"][0] == "UNAVAILABLE" and "model.onnx" in refused["3"][1], refused
    assert sha_failures >= 2 and session_failures == 2
    assert after["2"] == ("READY", "") and after["3"][0] == "UNAVAILABLE"
    assert ready == 200
    assert "refused fashion-cnn version 3: session_error" in logs
    # each worker swaps by itself: both answer, 1 or 2, until both have 2; never 3
    assert {v for _, v in results} == {"1", "2"}
