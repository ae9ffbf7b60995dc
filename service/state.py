"""What the lifespan builds and every request reaches through ``request.state.nnserve``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from service.engine import Engine
from service.metrics import Metrics
from service.model import ServedModel
from service.registry import Registry
from service.settings import Settings


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    registry: Registry
    engine: Engine

    def resolve(self, request: Request, name: str, version: str | None = None) -> ServedModel:
        """The served model a route is about; labels the request's metrics with it."""
        parsed = None if version is None else self.registry.parse_version(version)
        model = self.registry.get(name, parsed)
        labels: dict[str, Any] = request.scope["nnserve"]
        labels["model"], labels["version"] = model.name, str(model.version)
        return model


def services(request: Request) -> Services:
    return request.state.nnserve  # type: ignore[no-any-return]
