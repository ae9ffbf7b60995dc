"""The typed request context: what the edge learned about a request, handed down to the
data plane as an argument. Frozen: layers below read it, none writes it back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Span


@dataclass(frozen=True, slots=True)
class RequestContext:
    #: The request's id (the client's ``X-Request-Id`` when safe, else generated); prediction
    #: ids derive from it.
    request_id: str
    #: Absolute ``time.perf_counter()`` deadline: past it the request gets DeadlineExceeded.
    deadline: float
    #: The request's span while tracing is on (``service.observability.tracing``), else None:
    #: the batch it runs in becomes part of its trace.
    trace: Span | None = None

    def prediction_ids(self, n: int) -> list[str]:
        """The request id for a lone prediction, ``<request id>-<index>`` for each of several."""
        rid = self.request_id
        return [rid] if n == 1 else [f"{rid}-{i}" for i in range(n)]
