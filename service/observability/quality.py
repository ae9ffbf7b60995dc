"""Model quality in production, per model version: live accuracy over the last feedback
labels (a forecaster's: live MAE and RMSE per horizon step over the last actual values),
read from the prediction log's store at scrape time (so every worker process and every
replica sharing the store reports the same figure), and input drift (computed by the
prediction-log writer over the rows it writes, read from its figures at scrape time)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from modelrepo import Forecast, ModelCard
from predictionlog import Store


@dataclass(frozen=True)
class StepError:
    """One forecaster version's error at one horizon step (1 = the next value): live over
    the window's actual values (``n`` of them), or from its card's test figures."""

    model: str
    version: int
    step: int
    mae: float
    rmse: float
    n: int


class Quality:
    """Which versions serve (only theirs are exported: a retired version's series end with
    it), and their live accuracy from the store."""

    def __init__(self, accuracy_window: int = 500, store: Store | None = None) -> None:
        self.accuracy_window = accuracy_window
        self.store = store
        self.serving: set[tuple[str, int]] = set()
        self.forecasts: dict[tuple[str, int], Forecast] = {}

    def track(self, card: ModelCard) -> None:
        self.serving.add((card.name, card.version))
        if card.forecast is not None:
            self.forecasts[(card.name, card.version)] = card.forecast

    def forget(self, card: ModelCard) -> None:
        self.serving.discard((card.name, card.version))
        self.forecasts.pop((card.name, card.version), None)

    def forecast_errors(self) -> list[StepError]:
        """Live MAE and RMSE per horizon step over the last ``accuracy_window`` actual values
        of each serving forecaster version (steps with no actual value yet are absent)."""
        if self.store is None:
            return []
        figures = []
        for model, version in sorted(self.forecasts):
            errors: dict[int, list[float]] = {}
            for predicted, step, actual in self.store.recent_actuals(
                model, version, self.accuracy_window
            ):
                if step < predicted.size:
                    errors.setdefault(step, []).append(float(predicted.flat[step]) - actual)
            for step, diffs in sorted(errors.items()):
                n = len(diffs)
                mae = math.fsum(abs(d) for d in diffs) / n
                rmse = math.sqrt(math.fsum(d * d for d in diffs) / n)
                figures.append(StepError(model, version, step + 1, mae, rmse, n))
        return figures

    def test_errors(self) -> list[StepError]:
        """Each serving forecaster's test MAE and RMSE per step, from its card: the level the
        live error is compared with."""
        return [
            StepError(model, version, e.step, e.mae, e.rmse, forecast.origins)
            for (model, version), forecast in sorted(self.forecasts.items())
            for e in forecast.model_errors().per_step
        ]

    def accuracy(self) -> list[tuple[str, int, float, int]]:
        """(model, version, accuracy over the window, labels in the window) of each serving
        version with feedback."""
        if self.store is None:
            return []
        figures = []
        for model, version in sorted(self.serving):
            right, labelled = self.store.recent_outcomes(model, version, self.accuracy_window)
            if labelled:
                figures.append((model, version, right / labelled, labelled))
        return figures
