"""A real ``python -m service`` process on 127.0.0.1 and a free port, for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.paths import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(process: subprocess.Popen[bytes], url: str, timeout: float, log: Path) -> None:
    """Poll ``url`` until it answers 200; fail with the process's log if it exits or times out."""
    name = Path(str(process.args[0] if isinstance(process.args, list) else process.args)).name
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not up after {timeout}s:\n{log.read_text()}")
        time.sleep(0.1)


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
    repository: Path,
    tmp_path: Path,
    ready_timeout: float = 60.0,
    *,
    args: Sequence[str] = (),
    prefix: Sequence[str] = (),
    port: int | None = None,
    **env: str,
) -> Iterator[Server]:
    """``python -m service *args``, run by ``prefix`` (e.g. setpriv) if given."""
    port = port or free_port()
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
            [*prefix, sys.executable, "-m", "service", *args],
            cwd=ROOT,
            env=environment,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, log)
    try:
        wait_until_up(process, f"{server.url}/v2/health/live", ready_timeout, server.log)
        yield server
    finally:
        stop(process, 30)


def stop(process: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def writer_pid(service: int) -> int:
    """The log writer process the service started (its child running predictionlog)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == service and b"predictionlog" in command:
            return int(stat.parent.name)
    raise AssertionError("no log writer process under the service")


def children(pid: int) -> dict[int, int]:
    """``{pid: parent pid}`` of every process on the machine."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return parents


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (master, workers, the log writer)."""
    parents = children(root)
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree.extend(frontier)
    return tree


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> float:
    """Seconds until ``predicate()`` held; AssertionError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true within {timeout}s")
        time.sleep(step)
    return time.monotonic() - started
