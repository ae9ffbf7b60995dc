"""The gRPC server: grpc.aio on the worker's own event loop, started and stopped by the
lifespan (``service.app``) beside HTTP, so that it shares the batchers, registry, metrics,
prediction log and error table.

Every call passes through :meth:`GrpcEdge._handler`: the choke point for its id, deadline,
access check, metrics (``protocol="grpc"``), log line and status code, as
``service.http.edge.RequestObserver`` is for HTTP. With several worker processes each binds
the same port: grpc sets ``SO_REUSEPORT`` on Linux by default (``grpc.so_reuseport``), and
the kernel spreads connections over the workers.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from itertools import count
from typing import Any

import grpc
from grpc import aio

from service.dataplane import DataPlane
from service.errors import NNServeError
from service.grpc.descriptor import SERVICE, Method, methods
from service.grpc.servicer import Call, Servicer, deadline
from service.grpc.status import code_of
from service.keys import KeyRing
from service.observability.logs import request_id
from service.observability.metrics import Metrics
from service.settings import Settings

log = logging.getLogger("nnserve.grpc")
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
PROTOCOL = "grpc"

Implementation = Callable[[Any, Call, Any], Awaitable[None]]


class GrpcEdge:
    def __init__(
        self, settings: Settings, metrics: Metrics, plane: DataPlane, keys: KeyRing | None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.servicer = Servicer(plane, settings, metrics, keys)
        self._ids = count(1)
        self._id_prefix = os.urandom(4).hex()
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._in_flight = metrics.in_flight.labels(PROTOCOL)
        self.server: aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        server = aio.server(
            options=[
                ("grpc.max_receive_message_length", self.settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 1),  # the default on Linux; every worker binds the port
            ],
        )
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                self._handler(method, getattr(self.servicer, name)),
                request_deserializer=method.request.FromString,
                response_serializer=method.response.SerializeToString,
            )
            for name, method in methods().items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        self.port = server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"gRPC: cannot bind {address}")
        await server.start()
        self.server = server
        log.info(
            "gRPC (%s) on %s:%d, worker process %d",
            SERVICE,
            self.settings.host,
            self.port,
            os.getpid(),
        )

    async def stop(self, grace: float) -> None:
        """Refuse new calls; the ones in flight finish within ``grace`` seconds."""
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None

    # -- the per-call choke point ------------------------------------------------------------
    def _handler(
        self, method: Method, implementation: Implementation
    ) -> Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        name, response_type = method.name, method.response
        authorize = self.servicer.authorize
        default_s = self.settings.request_timeout_ms / 1000

        async def handle(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            metadata = {m.key: m.value for m in context.invocation_metadata() or ()}
            given = metadata.get("x-request-id")
            rid = (
                given
                if isinstance(given, str) and _SAFE_ID.fullmatch(given)
                else f"{self._id_prefix}{next(self._ids):012x}"
            )
            token = request_id.set(rid)
            call = Call(rid, deadline(context.time_remaining(), default_s), metadata)
            response = response_type()
            status = 200
            self._in_flight.inc()
            try:
                authorize(name, call)
                await implementation(request, call, response)
            except NNServeError as exc:
                code, status = code_of(exc)
                context.set_code(code)
                context.set_details(exc.message)
                log.info("gRPC %s -> %s", name, code.name, extra={"status": status})
            except Exception:
                status = 500
                log.exception("unhandled error in gRPC %s", name)
                context.set_code(grpc.StatusCode.INTERNAL)
                context.set_details(f"internal error (request id {rid})")
            finally:
                self._in_flight.dec()
                self._observe(call.model, call.version, status, time.perf_counter() - started)
                request_id.reset(token)
            return response

        return handle

    def _observe(self, model: str, version: str, status: int, seconds: float) -> None:
        key = (model, version, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.metrics.requests.labels(PROTOCOL, model, version, str(status)),
                self.metrics.request_duration.labels(PROTOCOL, model, version),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
