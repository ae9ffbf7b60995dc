"""Live accuracy bookkeeping (the service's side of model quality)."""

from __future__ import annotations

from service.observability.quality import Quality


def test_live_accuracy_is_a_sliding_window() -> None:
    quality = Quality(accuracy_window=4)
    for correct in (False, False, True, True, True, True):
        quality.feedback("m", 1, correct)
    assert quality.accuracy() == [("m", 1, 1.0, 4)]
    assert quality.feedback_counts == {("m", 1, "incorrect"): 2, ("m", 1, "correct"): 4}
