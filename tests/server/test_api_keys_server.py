"""API keys against a real ``python -m service`` with two workers: a refused call leaves the
connection usable, the counter sums over workers, every worker picks up a changed key file,
the log names key ids and never keys, and an unusable key file stops the start."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from service.keys import digest, new_key
from tests.server.test_workers import fresh, parallel, scrape, wait_for_workers
from tests.support import samples
from tests.support.metrics_text import value
from tests.support.paths import ROOT
from tests.support.repo_tools import copy_models
from tests.support.server import Server, running_server

ANN = "breast-cancer-ann"
ALICE, BOB, ADMIN = new_key(), new_key(), "server-admin-token"
PREDICT = f"/v1/models/{ANN}:predict"
BODY = orjson.dumps({"instances": samples.rows(1).tolist()})


def entry(key_id: str, key: str) -> str:
    return f"{key_id}:{digest(key.encode()).hex()}\n"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    file = tmp_path / "api-keys"
    file.write_text("# test keys\n" + entry("alice", ALICE))
    return file


@pytest.fixture
def server(tmp_path: Path, keys_file: Path) -> Iterator[Server]:
    with running_server(
        copy_models(tmp_path, ANN),
        tmp_path,
        NNSERVE_WORKERS="2",
        NNSERVE_POLL_INTERVAL="0",
        NNSERVE_PREDICTION_LOG="false",
        NNSERVE_ADMIN_TOKEN=ADMIN,
        NNSERVE_API_KEYS_FILE=str(keys_file),
    ) as running:
        wait_for_workers(running, 2)
        for _ in range(50):  # both workers have loaded the model
            assert fresh(f"{running.url}/v2/health/ready").status_code == 200
        yield running


def exchange_two(port: int, first: bytes, second: bytes) -> list[int]:
    """Both requests on one connection, pipelined: the statuses of the two responses."""
    statuses: list[int] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(first + second)
        buffer = b""
        while len(statuses) < 2:
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(65536)
                assert chunk, f"connection closed after {statuses}"
                buffer += chunk
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            statuses.append(int(lines[0].split()[1]))
            length = next(
                int(v) for k, _, v in (h.partition(b":") for h in lines[1:])
                if k.lower() == b"content-length"
            )  # fmt: skip
            while len(buffer) < length:
                buffer += conn.recv(65536)
            buffer = buffer[length:]
    return statuses


def request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_keys_with_two_workers(server: Server, keys_file: Path) -> None:
    url = server.url
    # a refused call with a 1 MB body, unread: the next request on that connection is answered
    big = b"[" + b"1," * 500_000 + b"1]"
    assert exchange_two(
        server.port, request(PREDICT, big, {}), request(PREDICT, BODY, auth(ALICE))
    ) == [401, 200]

    # the counter, exact over both workers (one connection per call spreads them)
    before = scrape(server)
    calls = parallel(40, lambda i: fresh(url + PREDICT, "POST", content=BODY, headers=auth(ALICE)))
    refused = parallel(10, lambda i: fresh(url + PREDICT, "POST", content=BODY))
    wrong = parallel(5, lambda i: fresh(url + PREDICT, "POST", content=BODY, headers=auth(ADMIN)))
    assert [r.status_code for r in calls] == [200] * 40
    assert [r.status_code for r in refused + wrong] == [401] * 15
    after = scrape(server)

    def moved(key: str, outcome: str) -> float:
        labels = {"key": key, "outcome": outcome}
        name = "nnserve_api_key_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("alice", "accepted") == 40
    assert moved("missing", "rejected") == 10
    assert moved("invalid", "rejected") == 5
    management = fresh(f"{url}/v2/repository/index", "POST", headers=auth(ALICE))
    assert management.status_code == 401  # an API key is no management token
    assert fresh(f"{url}/v2/repository/index", "POST", headers=auth(ADMIN)).status_code == 200

    # every worker picks up a changed file within a second or so: bob in, alice out
    keys_file.write_text(entry("bob", BOB))
    deadline = time.monotonic() + 10
    while True:
        bob = parallel(10, lambda i: fresh(url + PREDICT, "POST", content=BODY, headers=auth(BOB)))
        alice = parallel(10, lambda i: fresh(url + "/v1/models", headers=auth(ALICE)))
        codes = {r.status_code for r in bob} | {r.status_code + 1000 for r in alice}
        if codes == {200, 1401}:
            break
        assert time.monotonic() < deadline, codes
        time.sleep(0.2)

    logs = server.logs()
    assert '"key": "missing"' in logs or '"key":"missing"' in logs
    assert "API keys reloaded from" in logs
    for secret in (ALICE, BOB, ADMIN):
        assert secret not in logs
        assert secret not in fresh(f"{url}/metrics").text


def test_an_unusable_key_file_stops_the_start(tmp_path: Path) -> None:
    file = tmp_path / "api-keys"
    file.write_text(f"alice:{ALICE}\n")  # the key itself, where its digest belongs
    done = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env={"NNSERVE_API_KEYS_FILE": str(file), "NNSERVE_ADMIN_TOKEN": ADMIN, "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "invalid settings" in done.stderr and "line 1" in done.stderr
    assert ALICE not in done.stderr and ADMIN not in done.stderr
