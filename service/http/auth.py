"""Access control by API key (optional; README, "Access control"): an ASGI layer between the
edge's observer and the fast path, so that it guards the fast path's prediction routes and
FastAPI's routes alike, and so that its 401s are observed like any other reply.

It is only in the chain when keys are configured (``NNSERVE_API_KEYS_FILE`` /
``NNSERVE_API_KEYS``): with access control off a request pays nothing for it. With it on, a
guarded request costs one header scan, one SHA-256 and one dict lookup
(:meth:`service.keys.KeyRing.identify`).

Deny by default: every path needs a key except the open ones, so that a route added later is
guarded unless it is listed here. Open: health and server metadata (probes), ``/metrics``
(scrapes; unless ``NNSERVE_API_KEYS_PROTECT_METRICS``), the console's page and assets (no data
in them), and the management API, which has its
own token (``NNSERVE_ADMIN_TOKEN``, checked by ``service.http.repository``): an API key is no
management token, nor the reverse. Model metadata needs a key (a card tells the training data,
metrics, feature names and labels), and so does the OpenAPI document, which describes every
served model with its feature names and labels (``service.http.openapi``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Unauthorized
from service.http.requests import Exchange
from service.http.responses import Reply
from service.keys import INVALID, MISSING, KeyRing
from service.observability.metrics import Metrics

#: Open for probes: liveness, readiness and server metadata (what a client asks first).
HEALTH = frozenset(("/v2", "/v2/health/live", "/v2/health/ready"))
#: The management API: its own bearer token, never an API key.
MANAGEMENT = "/v2/repository/"
#: The console's page and its assets (``service.console``) hold no data: open, so that a
#: browser can load the page, which then sends the key it is given with every API call.
PAGE, ASSETS = "/", "/console/static/"
_REFUSED = {
    MISSING: Reply.error(Unauthorized("this call needs an API key: Authorization: Bearer <key>")),
    INVALID: Reply.error(Unauthorized("invalid API key")),
}


def bearer(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The credentials of the first ``Authorization: Bearer`` header, None without one."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            return credentials.strip() if scheme.lower() == b"bearer" else None
    return None


class ApiKeyGuard:
    def __init__(
        self, app: ASGIApp, keys: KeyRing, metrics: Metrics, open_paths: Iterable[str]
    ) -> None:
        self.app = app
        self.keys = keys
        self.open = frozenset(open_paths)
        self._counter = metrics.api_key_requests
        #: key label -> its counter child (``.labels`` is not free); the outcome follows from
        #: the label. Configured ids start at 0, so that a rate shows from the first call.
        self._counted: dict[str, Any] = {}
        for label in (*keys.ids, MISSING, INVALID):
            self._child(label)

    def _child(self, label: str) -> Any:
        child = self._counted.get(label)
        if child is None:
            outcome = "rejected" if label in _REFUSED else "accepted"
            child = self._counted[label] = self._counter.labels(label, outcome)
        return child

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path in self.open or path.startswith((MANAGEMENT, ASSETS)) or path == PAGE:
            await self.app(scope, receive, send)
            return
        presented = bearer(scope["headers"])
        key = MISSING if not presented else self.keys.identify(presented) or INVALID
        record: Exchange = scope["nnserve"]
        record.key = key  # the id for the edge's log line; never the key itself
        self._child(key).inc()
        refused = _REFUSED.get(key)
        if refused is not None:  # before the body is read: a refused call costs little
            await refused.send(send)
            return
        await self.app(scope, receive, send)
