"""The client connections of one worker process: uvicorn's httptools protocol with the limits
a server exposed to real networks needs and uvicorn does not have. uvicorn waits for a
request head or body for ever (its only timer is the keep-alive one, armed after a
response), and accepts connections until the process runs out of descriptors; then every
new connection, health checks included, is accepted and closed at once (uvloop), and the
worker's own files (repository scans, the prediction log) fail too. This module adds:

* **read deadlines**: a request head must be complete within ``header_timeout`` of the
  accept (or, on a kept-alive connection, of its first byte), and its body within
  ``body_timeout`` of its head; then 408 and close (a connection that sent nothing at all is
  closed without a word). The body's deadline is a total, not an idle time between reads:
  a prediction's own deadline (NNSERVE_REQUEST_TIMEOUT_MS) already runs while its body
  arrives, so a slower body could only end in 504, and a client that trickles a byte now
  and then is shed all the same.
* **a cap on open connections** (``max_connections``, per worker process): at the cap, a
  new connection takes the place of an idle kept-alive connection or of the one that has
  been waiting longest (at least :data:`STALLED_S`) for its client's head or body (which
  gets 408), so that stalled clients cannot lock others out; with none to replace, it gets
  503 + ``Connection: close``, except health and metrics (:data:`ALWAYS_SERVED`), which
  are answered from a headroom above the cap. Beyond the headroom a connection is closed at
  once, so that the worker keeps descriptors for its own files (:data:`RESERVE`).
* **keep-alive limits**: the idle timeout (uvicorn's timer) and a maximum age
  (``keepalive_max_age``, nginx's ``keepalive_time``): an older connection's next request
  is its last (its response says ``Connection: close``), so that long-lived client pools
  rebalance over workers and replicas (a replica added by an autoscaler gets its share). An
  age rather than nginx's count of requests, because counting needs a hook on every
  request; the age is read by the sweep.

uvicorn's own ``limit_concurrency`` is not used: it counts connections *and* in-flight
requests against one number, answers 503 to health checks like to anything else, and only
once a request head is complete, so stalled heads are never refused.

All of it is one sweep per worker every :data:`SWEEP_S` over its open connections (about
0.5 ms for a thousand: 0.1 % of a core), which reads uvicorn's own state of each (its
request cycle, whether the body is complete, whether a next request has begun), plus a
check at each accept. Requests cost nothing: no timer, no callback, not an attribute write
(measured: a hook on each request head costs 0.3-0.7 us, up to 1 % of a small model's
request, which is why there is none).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import Overloaded
from service.http.responses import Reply

if TYPE_CHECKING:
    from service.observability.metrics import Metrics
    from service.settings import Settings

log = logging.getLogger("nnserve.connections")

#: Paths answered even beyond the cap (from the headroom): probes and scrapes must see a
#: worker that is busy shedding connections as alive.
ALWAYS_SERVED = frozenset(("/v2/health/live", "/v2/health/ready", "/metrics"))
#: Descriptors kept for the worker's own files: model files and sessions, the log writer's
#: socket, metric files, a reload's second copy (about 30 open when idle).
RESERVE = 128
#: The default cap when the open-file limit allows more: memory, not descriptors, is then
#: what a connection costs; raise NNSERVE_MAX_CONNECTIONS for larger client pools.
DEFAULT_MAX_CONNECTIONS = 4096
#: Period of the sweep: a deadline is enforced within two of them (a body, or a kept-alive
#: connection's next head, counts from the first sweep that sees it begun).
SWEEP_S = 0.5
#: At the cap, only connections waiting this long for their client (or idle kept-alive
#: ones) make room: a head or body on its way is not cut off by a burst of newcomers.
STALLED_S = 1.0
#: Time a connection beyond the cap has to send its head (to be a probe) before it is closed.
OVER_CAP_GRACE_S = 1.0
#: ... of which it may not be displaced by a newcomer for this long: a burst of accepts is
#: handled before any of the connections is read, and would otherwise displace a probe
#: before its head (already on its way) is read.
OVER_CAP_KEPT_S = 0.25

HEAD, BODY = 0, 1  # what a stalled connection waits for
#: the shed counter's reasons (nnserve_connections_shed_total{reason})
REASONS = ("header_timeout", "body_timeout", "evicted_idle", "evicted_slow", "over_capacity",
           "refused")  # fmt: skip


def headroom(cap: int) -> int:
    """Connections beyond the cap that are still read (a probe's head decides)."""
    return max(16, cap // 8)


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    keepalive_timeout: float
    #: seconds a connection may be kept alive from its accept (no limit: inf)
    keepalive_max_age: float
    #: open connections served normally (per worker process)
    max_connections: int
    #: open connections at all: beyond, closed at accept
    ceiling: int

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        """The limits ``settings`` ask for, within the open-file limit. The soft limit is
        raised towards the hard one as far as the cap needs (as Go programs do, and nginx's
        ``worker_rlimit_nofile``): containers often start with soft 1,024 under a hard limit
        of 500,000 or more. A cap the descriptors cannot hold is lowered, with a warning."""
        wanted = settings.max_connections or DEFAULT_MAX_CONNECTIONS
        files = _raise_open_file_limit(wanted + headroom(wanted) + RESERVE)
        fits = max(2, files - RESERVE)  # connections the descriptors hold, headroom included
        cap = max(1, min(wanted, fits - max(16, fits // 9)))  # cap + headroom(cap) <= fits
        if settings.max_connections and cap < settings.max_connections:
            log.warning(
                "NNSERVE_MAX_CONNECTIONS=%d needs %d open files, the limit is %d: %d per worker",
                wanted, wanted + headroom(wanted) + RESERVE, files, cap,
            )  # fmt: skip
        log.info(
            "connections per worker: %d served, %d more read for health and metrics, then "
            "closed at accept (open-file limit %d)", cap, min(fits, cap + headroom(cap)) - cap,
            files,
        )  # fmt: skip
        return cls(
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            keepalive_max_age=settings.keepalive_max_age or float("inf"),
            max_connections=cap,
            ceiling=min(fits, cap + headroom(cap)),
        )


def _raise_open_file_limit(wanted: int) -> int:
    """The soft RLIMIT_NOFILE, raised to ``wanted`` if the hard limit allows (else to it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                log.warning("could not raise the open-file limit from %d to %d", soft, target)
    return wanted if soft == resource.RLIM_INFINITY else soft


def connection_class(limits: ConnectionLimits) -> type[Connection]:
    """uvicorn's ``http`` protocol class for one worker, bound to ``limits``."""

    class Bound(Connection):
        pass

    Bound.limits = limits
    return Bound


_OVERLOADED = Reply.error(Overloaded("the server is at its connection limit, try again"))
_OVERLOADED.headers = [*(_OVERLOADED.headers or []), (b"connection", b"close")]
_TIMED_OUT_BODY = b'{"error":"the request was not sent in time"}'
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMED_OUT_BODY), _TIMED_OUT_BODY)
)


@dataclass(slots=True)
class Watch:
    """What the guard notes about a connection, in one attribute of it: uvicorn's protocol
    has 28, and past 30 CPython keeps an object's attributes in a dict of their own, which
    slows every attribute read of every request (measured: 0.3 us a request)."""

    accepted: float = 0.0
    #: what the client was last seen to owe (a body: its cycle; a next head: its scope),
    #: and when a sweep first saw it
    owed: object = None
    owed_since: float = 0.0


class Connection(HttpToolsProtocol):
    """One client connection: uvicorn's, plus what the worker's :class:`Guard` notes about
    it. Nothing here runs per request. ``app``, what the next request runs, is the
    application (``config.loaded_app``) or a gate in front of it."""

    limits: ClassVar[ConnectionLimits]
    guard: ClassVar[Guard | None] = None  # one per worker process, made by its first connection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]
        self.watch = Watch()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cls = type(self)
        guard = cls.guard or cls._start(self)
        self.watch.accepted = self.loop.time()
        if len(self.connections) > self.limits.max_connections:
            guard.make_room(self)

    @classmethod
    def _start(cls, first: Connection) -> Guard:
        cls.guard = Guard(cls.limits, first)
        return cls.guard

    # -- what the guard reads -------------------------------------------------------------
    def stalled(self, now: float) -> tuple[int, float] | None:
        """What this connection waits for from its client (HEAD or BODY) and since when;
        None while it answers, or idles between requests. ``now``: a sweep's time, the
        start of a wait this is the first to see."""
        cycle = self.cycle
        watch = self.watch
        if cycle is None:  # its first head, from the accept
            return HEAD, watch.accepted
        owed: object
        if cycle.more_body:  # the body of the request being answered
            waiting_for, owed = BODY, cycle
        elif cycle.response_complete and self.scope is not cycle.scope:  # a next head began
            waiting_for, owed = HEAD, self.scope
        else:
            return None
        if watch.owed is not owed:
            watch.owed, watch.owed_since = owed, now
        return waiting_for, watch.owed_since

    def retire_if_old(self, now: float) -> None:
        """Past its maximum age, its next request is its last: that response says Connection:
        close (closing the connection outright could cut off a request on its way)."""
        serve = self.config.loaded_app
        if now - self.watch.accepted > self.limits.keepalive_max_age and self.app is serve:
            self.app = self._last_request

    async def _last_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.cycle is not None:
            self.cycle.keep_alive = False
        await self.config.loaded_app(scope, receive, send)

    def idle(self) -> bool:
        """Kept alive between two requests (uvicorn's keep-alive timer is armed)."""
        return self.timeout_keep_alive_task is not None

    def time_out(self, waiting_for: int, reason: str) -> None:
        """Close, with a 408 unless the client sent nothing or a response is under way."""
        if waiting_for == HEAD:
            self.shed(reason, answer=self.scope is not None)
        else:
            self.shed(reason, answer=not self.cycle.response_started)

    def shed(self, reason: str, answer: bool) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if self.guard is not None:
            self.guard.count(reason)
        if answer:
            transport.write(_TIMED_OUT)
        transport.close()
        if transport.get_write_buffer_size():  # a client that does not read: do not wait
            transport.abort()

    # -- beyond the cap -------------------------------------------------------------------
    def admit_over_cap(self) -> None:
        """Read this connection's head for a short while: a probe is served, anything else
        gets 503; either way the connection closes after its response."""
        self.app = self._over_cap
        grace = min(OVER_CAP_GRACE_S, self.limits.header_timeout)
        self.loop.call_later(grace, self._grace_over)

    def _grace_over(self) -> None:
        if self.cycle is None:  # no complete head yet
            self.shed("over_capacity", answer=False)

    async def _over_cap(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.cycle is not None:
            self.cycle.keep_alive = False
        if scope["path"] in ALWAYS_SERVED:
            await self.config.loaded_app(scope, receive, send)
        else:
            if self.guard is not None:
                self.guard.count("over_capacity")
            await _OVERLOADED.send(send)


class Guard:
    """A worker's connections as a whole: the sweep that enforces the deadlines, and room
    at the cap. Made by the worker's first connection, on its event loop."""

    def __init__(self, limits: ConnectionLimits, first: Connection) -> None:
        self.limits = limits
        self.loop = first.loop
        self.connections = first.connections
        #: at the cap, who makes room first: idle kept-alive connections, then the longest
        #: stalled (what they wait for, since when); listed by the sweep, checked when used
        self.candidates: list[tuple[Connection, tuple[int, float] | None]] = []
        #: connections read beyond the cap, oldest first
        self.beyond_cap: deque[Connection] = deque()
        edge = first.app_state.get("nnserve")
        metrics: Metrics | None = getattr(edge, "metrics", None)
        self.counters = {r: metrics.connections_shed.labels(r) for r in REASONS} if metrics else {}
        self.open = metrics.connections_open if metrics else None
        if metrics is not None:
            metrics.connections_limit.set(limits.max_connections)
        self.loop.call_later(SWEEP_S, self.sweep)

    def count(self, reason: str) -> None:
        counter = self.counters.get(reason)
        if counter is not None:
            counter.inc()

    def sweep(self) -> None:
        self.loop.call_later(SWEEP_S, self.sweep)  # first: an error below stops no sweep
        now = self.loop.time()
        timeouts = {HEAD: self.limits.header_timeout, BODY: self.limits.body_timeout}
        reasons = {HEAD: "header_timeout", BODY: "body_timeout"}
        idle: list[tuple[Connection, tuple[int, float] | None]] = []
        stalled: list[tuple[Connection, tuple[int, float] | None]] = []
        open_ = 0
        for conn in tuple(self.connections):
            if not isinstance(conn, Connection) or conn.transport.is_closing():
                continue
            open_ += 1
            conn.retire_if_old(now)
            waiting = conn.stalled(now)
            if waiting is None:
                if conn.idle():
                    idle.append((conn, None))
                continue
            waiting_for, since = waiting
            if now - since > timeouts[waiting_for]:
                conn.time_out(waiting_for, reasons[waiting_for])
                open_ -= 1
            elif now - since >= STALLED_S:
                stalled.append((conn, waiting))
        stalled.sort(key=lambda pair: pair[1][1] if pair[1] else 0.0, reverse=True)
        self.candidates = stalled + idle  # popped from the end: idle first, then the oldest
        self.beyond_cap = deque(
            c for c in self.beyond_cap if c.cycle is None and not c.transport.is_closing()
        )
        if self.open is not None:
            self.open.set(open_)

    def make_room(self, newcomer: Connection) -> None:
        """``newcomer`` is over the cap: it replaces an idle or stalled connection, else it
        is read from the headroom (a probe is served, anything else gets 503); with the
        headroom full, it replaces the oldest connection there that has not sent its head
        (in :data:`OVER_CAP_KEPT_S`), else it is closed at once."""
        candidates = self.candidates
        now = self.loop.time()
        while candidates:
            conn, waiting = candidates.pop()
            if conn.transport.is_closing():
                continue
            if waiting is None:
                if conn.idle():
                    self.count("evicted_idle")
                    conn.transport.close()
                    return
            elif conn.stalled(now) == waiting:  # still waiting for what it was listed for
                conn.time_out(waiting[0], "evicted_slow")
                return
        if len(self.connections) > self.limits.ceiling and not self._displace(now):
            self.count("refused")  # the headroom is full, of connections just accepted
            newcomer.transport.close()
            return
        newcomer.admit_over_cap()
        self.beyond_cap.append(newcomer)

    def _displace(self, now: float) -> bool:
        """Close the oldest connection beyond the cap that has not sent its head, if it has
        had :data:`OVER_CAP_KEPT_S` to do so."""
        reading = self.beyond_cap
        while reading:
            conn = reading[0]
            if conn.cycle is not None or conn.transport.is_closing():
                reading.popleft()  # answered, or gone
            elif now - conn.watch.accepted >= OVER_CAP_KEPT_S:
                reading.popleft()
                conn.shed("over_capacity", answer=False)
                return True
            else:
                return False
        return False
