"""Slow and abusive clients against a real service (``service.http.connections``): read
deadlines (408 or a close), keep-alive limits, and thousands of stalled connections against
a worker whose open-file limit is 1,024, which leave health and predictions answering."""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.http.connections import REASONS
from tests.support.metrics_text import parse, value
from tests.support.repo_tools import copy_models
from tests.support.samples import batch_for
from tests.support.server import Server, running_server

pytestmark = pytest.mark.server

ANN = "breast-cancer-ann"
PREDICT = f"/v1/models/{ANN}:predict"
BODY = json.dumps({"instances": batch_for(ANN)[:1].tolist()}).encode()
#: two sweeps (0.5 s each: a body or a kept-alive connection's next head counts from the
#: first that sees it) and scheduling on a busy machine
MARGIN = 2.0
#: connections per worker served before 503 when the open-file limit is 1,024: 1,024 less
#: 128 for the worker's own files is 896, of which an eighth is headroom for probes
CAP = 797
END = "\r\n"


def head(last: bool = True) -> bytes:
    """A prediction's request head; without its last line break unless ``last``."""
    lines = f"POST {PREDICT} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    return f"{lines}Content-Length: {len(BODY)}\r\n{END if last else ''}".encode()


@dataclass
class Ending:
    """How a connection ended: the status it got (0: none, closed) and after how long."""

    status: int
    seconds: float


async def held(port: int, sent: bytes, limit: float, opened: list[int] | None = None) -> Ending:
    """Connect, send ``sent``, then wait (at most ``limit``) for the server to end it."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if sent:
            writer.write(sent)
        if opened is not None:
            opened.append(1)
        data = await asyncio.wait_for(reader.read(64), limit)
    except TimeoutError:
        return Ending(-1, time.monotonic() - started)  # still open
    except ConnectionError:  # reset
        data = b""
    finally:
        writer.close()
    return Ending(int(data[9:12]) if data else 0, time.monotonic() - started)


async def ask(port: int, method: str, path: str, body: bytes = b"") -> int:
    """One request on a connection of its own; 0 when the connection is closed unanswered."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        head_ = f"{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        if body:
            head_ += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(f"{head_}\r\n".encode() + body)
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    except ConnectionError:
        return 0
    return int(data[9:12]) if data else 0


async def response(reader: asyncio.StreamReader) -> bytes:
    """One whole response (head and Content-Length body); the head lower-cased."""
    head_ = (await reader.readuntil(b"\r\n\r\n")).lower()
    length = int(head_.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
    return head_ + await reader.readexactly(length)


def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async def get() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = await reader.read()
        writer.close()
        return data

    return parse(asyncio.run(get()).split(b"\r\n\r\n", 1)[1].decode())


def shed(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], reason: str) -> float:
    return value(samples, "nnserve_connections_shed_total", reason=reason)


def test_read_deadlines_and_keepalive_limits(tmp_path: Path) -> None:
    settings = {
        "NNSERVE_HEADER_TIMEOUT": "1.5",
        "NNSERVE_BODY_TIMEOUT": "2",
        "NNSERVE_KEEPALIVE_TIMEOUT": "1",
        "NNSERVE_KEEPALIVE_MAX_AGE": "2",
    }
    with running_server(
        copy_models(tmp_path, ANN), tmp_path, NNSERVE_WORKERS="1", **settings
    ) as server:
        port = server.port

        async def kept_alive(then: bytes) -> tuple[bytes, Ending]:
            """One request answered, then ``then`` on the same connection."""
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head() + BODY)
            first = await response(reader)
            started = time.monotonic()
            writer.write(then)
            try:
                data = await asyncio.wait_for(reader.read(64), 10)
            except ConnectionError:
                data = b""
            writer.close()
            return first, Ending(int(data[9:12]) if data else 0, time.monotonic() - started)

        async def old_connection() -> list[bytes]:
            """Requests one after another on one connection until it is closed."""
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answers = []
            for _ in range(40):
                writer.write(head() + BODY)
                answer = await response(reader)
                answers.append(answer)
                if b"connection: close" in answer:
                    assert await reader.read() == b""  # and it is closed
                    break
                await asyncio.sleep(0.2)
            writer.close()
            return answers

        async def scenario() -> tuple[list[Ending], tuple[bytes, Ending], tuple[bytes, Ending]]:
            endings = asyncio.gather(
                held(port, b"", 10),  # sends nothing
                held(port, head(last=False), 10),  # half a head
                held(port, head() + BODY[: len(BODY) // 2], 10),  # half a body
            )
            next_head = kept_alive(head(last=False))
            idle = kept_alive(b"")
            return await asyncio.gather(endings, next_head, idle)

        started = time.monotonic()
        (silent, half_head, half_body), (_, next_head), (first, idle) = asyncio.run(scenario())
        answers = asyncio.run(old_connection())
        aged = time.monotonic() - started

        assert (silent.status, half_head.status, half_body.status) == (0, 408, 408)
        assert 1.5 <= silent.seconds < 1.5 + MARGIN
        assert 1.5 <= half_head.seconds < 1.5 + MARGIN
        assert 2 <= half_body.seconds < 2 + MARGIN
        assert next_head.status == 408 and 1.5 <= next_head.seconds < 1.5 + MARGIN
        # (the server armed its keep-alive timer a little before this client read the answer)
        assert b"200 ok" in first and idle.status == 0 and 0.5 <= idle.seconds < 1 + MARGIN
        # past its maximum age (2 s), a busy connection's next response closes it
        assert all(a.startswith(b"http/1.1 200 ok") for a in answers)
        assert b"connection: close" in answers[-1] and len(answers) >= 5, aged
        samples = scrape(server)
        assert shed(samples, "header_timeout") == 3
        assert shed(samples, "body_timeout") == 1


def raise_own_open_file_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the open-file limit of this test process is {hard}, under {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.mark.parametrize("workers", [1, 2])
def test_thousands_of_stalled_clients_leave_the_service_answering(
    tmp_path: Path, workers: int
) -> None:
    """Issue 15's attack: 2,000 connections that send half a head or a head and half a
    body, and stall, against a service whose open-file limit is 1,024 per process (797
    connections per worker before 503). Health answers throughout, predictions once the
    stalled connections have been waiting a second (they make room for newcomers), those
    beyond the cap get 503 or are closed, and every stalled one is shed within its deadline
    (408 or a close)."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is not installed")
    n, header_s, body_s = 2000, 6.0, 7.0
    raise_own_open_file_limit(n + 256)
    with running_server(
        copy_models(tmp_path, ANN),
        tmp_path,
        prefix=[prlimit, "--nofile=1024:1024"],
        NNSERVE_WORKERS=str(workers),
        NNSERVE_HEADER_TIMEOUT=str(header_s),
        NNSERVE_BODY_TIMEOUT=str(body_s),
        NNSERVE_POLL_INTERVAL="0",
    ) as server:
        port = server.port
        before = scrape(server)

        async def attack() -> tuple[list[Ending], list[Ending], Counter[int], Counter[int]]:
            heads, bodies, opened = [], [], []
            for i in range(n):  # in bursts, as fast as the loop opens them
                if i % 2:
                    heads.append(asyncio.create_task(held(port, head(last=False), 30, opened)))
                else:
                    sent = head() + BODY[: len(BODY) // 2]
                    bodies.append(asyncio.create_task(held(port, sent, 30, opened)))
                if i % 250 == 249:
                    await asyncio.sleep(0)
            while len(opened) < n:
                await asyncio.sleep(0.01)
            opened_at = time.monotonic()
            health = [await ask(port, "GET", "/v2/health/ready")]  # at once: beyond the cap
            await asyncio.sleep(2.0)  # the stalled ones have waited a second: they make room
            predictions = []
            while time.monotonic() - opened_at < header_s - 1.5:  # while they are all held
                health.append(await ask(port, "GET", "/v2/health/ready"))
                predictions.append(await ask(port, "POST", PREDICT, BODY))
                await asyncio.sleep(0.1)
            return (
                await asyncio.gather(*heads),
                await asyncio.gather(*bodies),
                Counter(health),
                Counter(predictions),
            )

        heads, bodies, health, predictions = asyncio.run(attack())
        assert health.keys() == {200}, health
        assert predictions.keys() == {200} and predictions.total() >= 5, predictions
        assert {e.status for e in heads} <= {0, 408}, Counter(e.status for e in heads)
        assert {e.status for e in bodies} <= {0, 408, 503}, Counter(e.status for e in bodies)
        assert max(e.seconds for e in heads) < header_s + MARGIN
        assert max(e.seconds for e in bodies) < body_s + MARGIN
        after = scrape(server)
        delta = {r: shed(after, r) - shed(before, r) for r in REASONS}
        assert sum(delta.values()) == n, delta  # each counted once, for one reason
        assert delta["header_timeout"] > 0 and delta["body_timeout"] > 0, delta
        # the cap held: the rest got 503, were closed, or made room (evicted_slow)
        assert delta["header_timeout"] + delta["body_timeout"] <= CAP * workers, delta
        assert value(after, "nnserve_connections_limit") == CAP * workers
        # and the service is well after it, its own files never short of descriptors
        assert asyncio.run(ask(port, "POST", PREDICT, BODY)) == 200
        assert "Too many open files" not in server.logs()
