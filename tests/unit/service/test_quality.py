"""Live accuracy: read from the prediction log's store, so every worker and replica that
shares it reports the same figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelrepo import ModelCard
from predictionlog import Feedback, Prediction, open_store
from service.observability.quality import Quality


class _Card:
    def __init__(self, name: str, version: int) -> None:
        self.name, self.version = name, version
        self.forecast = None


def test_live_accuracy_is_a_sliding_window_over_the_store(tmp_path: Path) -> None:
    store = open_store(tmp_path / "log.db")
    outcomes = [False, False, True, True, True, True]  # oldest feedback first
    x, y = np.zeros(2, np.float32), np.ones(2, np.float32)
    made = [Prediction(f"p{i}", 1.0 + i, "m", 1, x, y, "a") for i in range(len(outcomes))]
    store.write_predictions([*made, Prediction("other", 1.0, "m", 2, x, y, "a")])
    for i, right in enumerate(outcomes):
        store.record_feedback(Feedback(f"p{i}", "a" if right else "b", 100.0 + i))
    store.record_feedback(Feedback("other", "b", 200.0))

    quality = Quality(accuracy_window=4, store=store)
    card: ModelCard = _Card("m", 1)  # type: ignore[assignment]
    quality.track(card)
    assert quality.accuracy() == [("m", 1, 1.0, 4)]  # the last four labels, all right
    quality.accuracy_window = 6
    assert quality.accuracy() == [("m", 1, 4 / 6, 6)]
    quality.forget(card)  # a retired version's series end with it
    assert quality.accuracy() == []
    store.close()


def test_no_store_no_accuracy() -> None:
    quality = Quality()
    quality.track(_Card("m", 1))  # type: ignore[arg-type]
    assert quality.accuracy() == []
