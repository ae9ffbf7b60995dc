"""A real ``python -m service`` process on 127.0.0.1 and a free port, for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_server(
    repository: Path, tmp_path: Path, ready_timeout: float = 60.0, **env: str
) -> Iterator[Server]:
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    environment = {
        **os.environ,
        "NNSERVE_HOST": "127.0.0.1",
        "NNSERVE_PORT": str(port),
        "NNSERVE_MODEL_REPOSITORY": str(repository),
        "NNSERVE_DATA_DIR": str(tmp_path / f"data-{port}"),
        **env,
    }
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.logs()}")
            try:
                if httpx.get(f"{server.url}/v2/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up after {ready_timeout}s:\n{server.logs()}")
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
