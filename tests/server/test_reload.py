"""Hot reload, version policies and the management API against a real server."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.support import samples
from tests.support.metrics_text import parse, value
from tests.support.repo_tools import copy_models, publish_copy, wrong_reference
from tests.support.server import Server, running_server, wait_for

ROW = {"instances": samples.rows(1).tolist()}
ANN = "/v1/models/breast-cancer-ann:predict"


def served_version(server: Server) -> str:
    r = httpx.post(f"{server.url}{ANN}", json=ROW)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_no_request_fails_while_ten_versions_are_swapped_in(tmp_path: Path) -> None:
    root = copy_models(tmp_path, "breast-cancer-ann")
    poll = 0.2
    published: dict[int, float] = {1: 0.0}  # version -> monotonic time it became visible
    results: list[tuple[float, float, int, str]] = []  # (start, end, status, version)

    async def client(url: str, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            while not stop.is_set():
                start = time.monotonic()
                r = await http.post(url, json=ROW)
                version = r.json().get("model_version", "") if r.status_code == 200 else ""
                results.append((start, time.monotonic(), r.status_code, version))

    async def scenario(server: Server) -> float:
        stop = asyncio.Event()
        clients = [asyncio.create_task(client(f"{server.url}{ANN}", stop)) for _ in range(32)]
        await asyncio.sleep(0.5)
        for _ in range(10):
            version = await asyncio.to_thread(publish_copy, root, "breast-cancer-ann")
            published[version] = time.monotonic()
            await asyncio.sleep(0.4)
        newest = max(published)
        while not any(v == str(newest) for *_, v in results[-32:]):
            await asyncio.sleep(0.02)
        lag = time.monotonic() - published[newest]
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)
        return lag

    with running_server(
        root, tmp_path, NNSERVE_POLL_INTERVAL=str(poll), NNSERVE_WORKERS="2"
    ) as server:
        lag = asyncio.run(scenario(server))
        load_seconds = value(
            parse(httpx.get(f"{server.url}/metrics").text),
            "nnserve_model_load_duration_seconds",
            model="breast-cancer-ann",
            version="11",
        )
    assert len(published) == 11
    assert len(results) > 500
    failed = [r for r in results if r[2] != 200]
    assert not failed, failed[:5]
    for start, end, _, version in results:
        v = int(version)
        assert published[v] <= end, f"version {v} answered before it was published"
        newer = [n for n, t in published.items() if n > v and t + poll + 1.0 < start]
        assert not newer, f"version {v} answered {start - published[v]:.2f}s after {newer}"
    assert lag <= poll + load_seconds + 0.5, f"newest version served after {lag:.2f}s"


def test_bad_versions_are_refused_while_the_old_one_serves(tmp_path: Path) -> None:
    root = copy_models(tmp_path, "breast-cancer-ann")
    with running_server(root, tmp_path, NNSERVE_POLL_INTERVAL="0.1", NNSERVE_WORKERS="2") as server:
        assert served_version(server) == "1"
        publish_copy(root, "breast-cancer-ann", corrupt_onnx=True)  # v2
        publish_copy(root, "breast-cancer-ann", edit_card=wrong_reference)  # v3

        def failures() -> dict[str, float]:
            m = parse(httpx.get(f"{server.url}/metrics").text)
            return {
                r: value(
                    m, "nnserve_model_load_failures_total", model="breast-cancer-ann", reason=r
                )
                for r in ("sha256_mismatch", "reference_mismatch")
            }

        # each worker loads and checks every version itself: a refusal counts once per worker
        wait_for(lambda: failures()["reference_mismatch"] == 2, 10)
        time.sleep(0.5)  # several more polls: refused versions are not retried
        assert failures() == {"sha256_mismatch": 2, "reference_mismatch": 2}
        assert served_version(server) == "1"
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        logs = server.logs()
        assert "refused breast-cancer-ann version 2: sha256_mismatch" in logs
        assert "refused breast-cancer-ann version 3: reference_mismatch" in logs
        publish_copy(root, "breast-cancer-ann")  # v4: good, picked up
        wait_for(lambda: all(served_version(server) == "4" for _ in range(10)), 10)
        shutil.rmtree(root / "breast-cancer-ann" / "4")  # removed: v1 serves again
        v4 = f"{server.url}/v2/models/breast-cancer-ann/versions/4"
        # every worker polls by itself: wait until ten calls in a row (any worker) agree
        wait_for(lambda: all(httpx.get(v4).status_code == 404 for _ in range(10)), 10)
        assert served_version(server) == "1"


def test_version_policies(tmp_path: Path) -> None:
    root = copy_models(tmp_path, "breast-cancer-ann", "fashion-cnn")
    for _ in range(2):
        publish_copy(root, "breast-cancer-ann")
        publish_copy(root, "fashion-cnn")
    (root / "fashion-cnn" / "serving.json").write_text('{"version_policy": "specific:1,3"}')
    with running_server(
        root, tmp_path, NNSERVE_VERSION_POLICY="latest:2", NNSERVE_POLL_INTERVAL="0"
    ) as server:
        meta = httpx.get(f"{server.url}/v2/models/breast-cancer-ann").json()
        assert meta["versions"] == ["2", "3"]
        assert httpx.get(f"{server.url}/v2/models/fashion-cnn").json()["versions"] == ["1", "3"]
        r = httpx.post(
            f"{server.url}/v2/models/breast-cancer-ann/versions/2/infer",
            json={
                "inputs": [
                    {
                        "name": "features",
                        "shape": [1, 30],
                        "datatype": "FP32",
                        "data": ROW["instances"][0],
                    }
                ]
            },
        )
        assert r.json()["model_version"] == "2"
        assert served_version(server) == "3"  # unversioned calls go to the newest


TOKEN = "s3cret-token"


def test_management_api(tmp_path: Path) -> None:
    root = copy_models(tmp_path, "breast-cancer-ann", "vowels-lstm")
    outside = tmp_path / "outside"
    shutil.copytree(root / "vowels-lstm", outside / "evil")
    os.symlink(outside / "evil", root / "evil")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with running_server(
        root, tmp_path, NNSERVE_ADMIN_TOKEN=TOKEN, NNSERVE_POLL_INTERVAL="0"
    ) as server:
        url = server.url
        assert httpx.post(f"{url}/v2/repository/index").status_code == 401
        wrong = httpx.post(f"{url}/v2/repository/index", headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        index = httpx.post(f"{url}/v2/repository/index", headers=auth).json()
        assert {(e["name"], e["version"], e["state"]) for e in index} == {
            ("breast-cancer-ann", "1", "READY"),
            ("vowels-lstm", "1", "READY"),
        }

        r = httpx.post(f"{url}/v2/repository/models/vowels-lstm/unload", headers=auth)
        assert r.status_code == 200
        assert httpx.get(f"{url}/v2/models/vowels-lstm/ready").status_code == 503
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200  # unloaded on purpose
        publish_copy(root, "breast-cancer-ann")
        r = httpx.post(f"{url}/v2/repository/models/breast-cancer-ann/load", headers=auth)
        assert r.json() == {"name": "breast-cancer-ann", "versions": ["2"]}
        assert served_version(server) == "2"
        r = httpx.post(f"{url}/v2/repository/models/vowels-lstm/load", headers=auth)
        assert r.status_code == 200 and r.json()["versions"] == ["1"]

        for path in ("..", "%2e%2e", "%2E%2E", "..%2f..%2fetc", "%2fetc%2fpasswd", "Evil", "evil"):
            r = httpx.post(f"{url}/v2/repository/models/{path}/load", headers=auth)
            assert r.status_code in (400, 404), (path, r.status_code, r.text)
        assert httpx.post(f"{url}//etc/passwd/load", headers=auth).status_code == 404
        index = httpx.post(f"{url}/v2/repository/index", headers=auth).json()
        assert "evil" not in {e["name"] for e in index}  # the symlink out is never loaded
        assert httpx.get(f"{url}/v2/models/evil").status_code == 404


def test_management_api_is_off_without_a_token(tmp_path: Path) -> None:
    root = copy_models(tmp_path, "breast-cancer-ann")
    with running_server(root, tmp_path) as server:
        for path in ("/v2/repository/index", "/v2/repository/models/breast-cancer-ann/unload"):
            r = httpx.post(f"{server.url}{path}", headers={"Authorization": "Bearer anything"})
            assert r.status_code == 403 and "NNSERVE_ADMIN_TOKEN" in r.json()["error"]
        assert served_version(server) == "1"


@pytest.mark.parametrize("model", ["fashion-cnn"])
def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path, model: str) -> None:
    root = copy_models(tmp_path, model)
    body = {"instances": samples.images(128).astype(int).tolist()}

    async def burst(server: Server) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as http:
            tasks = [
                asyncio.create_task(http.post(f"{server.url}/v1/models/{model}:predict", json=body))
                for _ in range(16)
            ]
            await asyncio.sleep(0.3)  # requests are in flight, most still queued
            server.process.send_signal(signal.SIGTERM)
            return list(await asyncio.gather(*tasks))

    with running_server(
        root,
        tmp_path,
        NNSERVE_MAX_BATCH_SIZE="128",
        NNSERVE_MAX_QUEUE_SIZE="4096",
        NNSERVE_INFERENCE_THREADS="1",
    ) as server:
        responses = asyncio.run(burst(server))
        assert server.process.wait(timeout=60) == 0
    assert [r.status_code for r in responses] == [200] * 16
    assert all(len(r.json()["predictions"]) == 128 for r in responses)
    assert "stopped" in server.logs()
