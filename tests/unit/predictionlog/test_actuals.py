"""A forecast's actual values in the store, on both backends: stored in pieces per horizon
step, repeats idempotent, a different value for a known step a conflict, read back for the
live error and for retraining, and pruned with their prediction."""

from __future__ import annotations

import numpy as np
import pytest

from predictionlog import FeedbackConflict, Prediction, Store, UnknownPrediction

T0 = 1_700_000_000.0


def forecast(id: str, version: int = 1, time: float = T0) -> Prediction:
    window = np.arange(104, dtype=np.float32) + 300
    return Prediction(id, time, "co2", version, window, np.arange(13, dtype=np.float32), None)


def test_actuals_come_in_pieces_and_are_read_back_by_step(store: Store) -> None:
    store.write_predictions([forecast("a"), forecast("b", version=2), forecast("c")])
    assert store.record_actuals("a", 0, [300.25, 301.5], T0 + 1) == 2
    assert store.record_actuals("a", 2, [302.75], T0 + 2) == 1
    assert store.record_actuals("a", 1, [301.5, 302.75, 303.0], T0 + 3) == 1  # two known
    assert store.record_actuals("b", 12, [0.1], T0 + 4) == 1
    with pytest.raises(FeedbackConflict, match="step 1"):
        store.record_actuals("a", 1, [999.0], T0 + 5)
    with pytest.raises(UnknownPrediction):
        store.record_actuals("nope", 0, [1.0], T0 + 5)
    recent = store.recent_actuals("co2", 1, 10)
    assert sorted((step, value) for _, step, value in recent) == [
        (0, 300.25),
        (1, 301.5),
        (2, 302.75),
        (3, 303.0),
    ]
    assert all(np.array_equal(f, np.arange(13, dtype=np.float32)) for f, _, _ in recent)
    assert [(s, v) for _, s, v in store.recent_actuals("co2", 1, 1)] == [(3, 303.0)]  # newest
    assert [(s, v) for _, s, v in store.recent_actuals("co2", 2, 10)] == [(12, 0.1)]
    found = store.with_actuals("co2")
    assert [(p.id, a) for p, a in found] == [
        ("a", {0: 300.25, 1: 301.5, 2: 302.75, 3: 303.0}),
        ("b", {12: 0.1}),
    ]
    assert found[0][0] == forecast("a")


def test_pruning_a_forecast_takes_its_actuals_with_it(store: Store) -> None:
    store.write_predictions([forecast("old", time=T0), forecast("new", time=T0 + 10)])
    store.record_actuals("old", 0, [1.0, 2.0], T0 + 20)
    store.record_actuals("new", 0, [3.0], T0 + 20)
    assert store.prune_oldest(1) == 1
    assert [p.id for p, _ in store.with_actuals("co2")] == ["new"]
    assert [(s, v) for _, s, v in store.recent_actuals("co2", 1, 10)] == [(0, 3.0)]
