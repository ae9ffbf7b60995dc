"""What the lifespan builds and every request reaches through ``request.state.nnserve``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from predictionlog import Prediction, PredictionLog, Store
from service.batcher import deadline_from
from service.errors import ModelNotReady
from service.metrics import Metrics
from service.model import ServedModel
from service.quality import Quality
from service.registry import Registry
from service.settings import Settings


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    registry: Registry
    quality: Quality
    log: PredictionLog | None = None
    store: Store | None = None

    def log_predictions(
        self, model: ServedModel, inputs: np.ndarray, outputs: list[np.ndarray], ids: list[str]
    ) -> None:
        """Queue one prediction-log row per instance (never blocks; see PredictionLog)."""
        if self.log is None or self.log.sample == 0:
            return
        now = time.time()
        labels = model.card.labels
        index = model.probabilities_index
        scores = outputs[index if index is not None else -1]
        names: list[str | None] = (
            [labels[i] for i in scores.argmax(axis=1).tolist()] if labels else [None] * len(ids)
        )
        self.log.record(
            [
                Prediction(
                    id=pid,
                    time=now,
                    model=model.name,
                    version=model.version,
                    inputs=inputs[i],
                    outputs=scores[i],
                    label=names[i],
                )
                for i, pid in enumerate(ids)
            ]
        )

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
