"""What the lifespan builds and every request reaches through ``request.state.nnserve``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from service.batcher import deadline_from
from service.errors import ModelNotReady
from service.metrics import Metrics
from service.model import ServedModel
from service.registry import Registry
from service.settings import Settings


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    registry: Registry

    def resolve(self, labels: dict[str, Any], name: str, version: str | None = None) -> ServedModel:
        """The served model a request is about. The request holds a lease on it until it
        ends (released by the RequestObserver), and its metrics are labelled with it."""
        parsed = None if version is None else self.registry.parse_version(version)
        model = self.registry.get(name, parsed)
        labels["model"], labels["version"] = model.name, str(model.version)
        if labels.get("lease") is None:
            model.leases += 1
            labels["lease"] = model
        return model

    async def infer(
        self, model: ServedModel, batch: np.ndarray, timeout_ms: str | None
    ) -> list[np.ndarray]:
        if model.batcher is None:
            raise ModelNotReady(f"model {model.name!r} version {model.version} is not serving")
        deadline = deadline_from(timeout_ms, self.settings.request_timeout_ms / 1000)
        return await model.batcher.submit(batch, deadline)


def services(request: Request) -> Services:
    return request.state.nnserve  # type: ignore[no-any-return]
