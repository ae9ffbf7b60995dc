"""What the lifespan hands every HTTP request (``scope["state"]["nnserve"]``), typed."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import Scope

from service.dataplane import DataPlane
from service.observability.metrics import Metrics
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
