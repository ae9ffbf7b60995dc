"""What the lifespan hands every HTTP request (``scope["state"]["nnserve"]``), typed."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import Scope

from service.dataplane import DataPlane
from service.http.requests import exchange
from service.observability.metrics import Metrics
from service.runtime.model import ServedModel
from service.settings import Settings


@dataclass(frozen=True)
class EdgeState:
    settings: Settings
    metrics: Metrics
    plane: DataPlane


def state_of(scope: Scope) -> EdgeState:
    state: EdgeState = scope["state"]["nnserve"]
    return state


def state(request: Request) -> EdgeState:
    return state_of(request.scope)


def served_model(request: Request, name: str, version: str | None = None) -> ServedModel:
    """The served model a metadata route is about, named in the request's metrics."""
    model = state(request).plane.model(name, version)
    exchange(request.scope).resolved(model)
    return model
