"""The calls of ``inference.GRPCInferenceService``, on the data plane.

Each call gets its request message, the edge's :class:`Call` record and an empty response
message to fill; it raises domain errors, which the server (``service.grpc.server``) turns
into status codes from the one table. No numpy here: ``service.grpc.codec`` converts tensors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from service import __version__
from service.context import RequestContext
from service.dataplane import DataPlane
from service.errors import Forbidden, ModelNotFound, ModelNotReady, Unauthorized
from service.grpc import codec
from service.keys import INVALID, MISSING, KeyRing, is_admin
from service.observability.metrics import Metrics
from service.protocol import v2
from service.settings import Settings

#: What a client asks first: open with API keys on, as over HTTP.
OPEN = frozenset(("ServerLive", "ServerReady", "ServerMetadata"))
#: The management calls: the admin token, never an API key.
MANAGEMENT = frozenset(("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"))
EXTENSIONS = ["model_repository"]


@dataclass(slots=True)
class Call:
    """What the edge knows about one call: its id, deadline and metadata, and the model it
    resolved (for the metrics' labels). Never passed below the edge."""

    request_id: str
    deadline: float
    metadata: dict[str, str]
    model: str = ""
    version: str = ""
    key: str = field(default="")


@dataclass
class Servicer:
    plane: DataPlane
    settings: Settings
    metrics: Metrics
    keys: KeyRing | None = None

    # -- access ------------------------------------------------------------------------------
    def authorize(self, method: str, call: Call) -> None:
        """API keys (when on) for the model calls; the admin token for the management ones."""
        if method in MANAGEMENT:
            token = self.settings.admin_token
            if token is None:
                raise Forbidden("the management API is off: set NNSERVE_ADMIN_TOKEN to enable it")
            if not is_admin(token.get_secret_value(), call.metadata.get("authorization", "")):
                raise Unauthorized("missing or wrong bearer token")
            return
        if self.keys is None or method in OPEN:
            return
        scheme, _, presented = call.metadata.get("authorization", "").partition(" ")
        given = presented.strip().encode() if scheme.lower() == "bearer" else b""
        call.key = MISSING if not given else self.keys.identify(given) or INVALID
        outcome = "rejected" if call.key in (MISSING, INVALID) else "accepted"
        self.metrics.api_key_requests.labels(call.key, outcome).inc()
        if outcome == "rejected":
            raise Unauthorized(
                "this call needs an API key: metadata authorization: Bearer <key>"
                if call.key == MISSING
                else "invalid API key"
            )

    # -- health and metadata -------------------------------------------------------------------
    async def ServerLive(self, request: Any, call: Call, response: Any) -> None:
        response.live = True

    async def ServerReady(self, request: Any, call: Call, response: Any) -> None:
        response.ready = self.plane.ready()

    async def ModelReady(self, request: Any, call: Call, response: Any) -> None:
        """Ready when a version is served; unknown or not loaded: ``ready: false`` (what
        Triton answers), not an error."""
        try:
            model = self.plane.model(request.name, request.version or None)
        except (ModelNotFound, ModelNotReady):
            response.ready = False
            return
        call.model, call.version = model.name, str(model.version)
        response.ready = True

    async def ServerMetadata(self, request: Any, call: Call, response: Any) -> None:
        response.name = "nnserve"
        response.version = __version__
        response.extensions.extend(EXTENSIONS)

    async def ModelMetadata(self, request: Any, call: Call, response: Any) -> None:
        model = self.plane.model(request.name, request.version or None)
        call.model, call.version = model.name, str(model.version)
        versions = [model.version] if request.version else self.plane.versions(model.name)
        described = v2.metadata(model, versions)
        response.name = described["name"]
        response.versions.extend(described["versions"])
        response.platform = described["platform"]
        for kind in ("inputs", "outputs"):
            for tensor in described[kind]:
                getattr(response, kind).add(
                    name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
                )

    # -- inference -----------------------------------------------------------------------------
    async def ModelInfer(self, request: Any, call: Call, response: Any) -> None:
        with self.plane.lease(request.model_name, request.model_version or None) as served:
            model = served.model
            call.model, call.version = model.name, str(model.version)
            ctx = RequestContext(call.request_id, call.deadline)
            batch, wanted = codec.decode(request, model)
            result = await self.plane.infer(ctx, served, batch, ctx.prediction_ids(len(batch)))
            codec.encode(response, model, request.id or call.request_id, wanted, result.outputs)
            if self.plane.log is not None:  # whether feedback on these ids can join
                logged = "logged" if result.recorded else "not-logged"
                response.parameters["prediction_log"].string_param = logged

    # -- the repository ------------------------------------------------------------------------
    async def RepositoryIndex(self, request: Any, call: Call, response: Any) -> None:
        for v in await self.plane.index():
            if request.ready and v.state != "READY":
                continue
            response.models.add(name=v.name, version=str(v.version), state=v.state, reason=v.reason)

    async def RepositoryModelLoad(self, request: Any, call: Call, response: Any) -> None:
        await self.plane.load(request.model_name)

    async def RepositoryModelUnload(self, request: Any, call: Call, response: Any) -> None:
        await self.plane.unload(request.model_name)


def deadline(remaining: float | None, default_s: float) -> float:
    """Absolute ``perf_counter`` deadline: the client's gRPC deadline when it set one (and it
    is sooner), else the default (``NNSERVE_REQUEST_TIMEOUT_MS``)."""
    timeout = default_s if remaining is None else min(max(remaining, 0.0), default_s)
    return time.perf_counter() + timeout
