"""The writer's drift trackers are bounded by the versions in use, not by every version ever
published: a retired version's window is dropped once it has been idle for a while.

Found by tests/endurance/test_soak.py: with a version published every 10 s the writer's
memory grew by about 0.3 MB per version (a 2,000-row window per version, kept for good)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from predictionlog import drift
from predictionlog.drift import IDLE_S, KEEP_NEWEST, Drifts
from tests.support import samples
from tests.support.paths import MODELS

NAME = "breast-cancer-ann"


def test_trackers_of_retired_versions_are_dropped_when_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for version in range(1, 7):
        folder = tmp_path / NAME / str(version)
        folder.mkdir(parents=True)
        shutil.copy(MODELS / NAME / "1" / "model.json", folder / "model.json")
    now = [1000.0]
    monkeypatch.setattr(drift.time, "monotonic", lambda: now[0])
    drifts = Drifts(tmp_path, window=100)
    rows = samples.rows(4)

    def serve(version: int) -> None:
        drifts.observe(NAME, version, rows)
        drifts.written(True)
        drifts.update(lambda: None, 256)

    for version in range(1, 6):  # five versions in turn, 10 s apart
        serve(version)
        now[0] += 10
    assert sorted(v for _, v in drifts.trackers) == [1, 2, 3, 4, 5]  # none idle long enough
    now[0] += IDLE_S
    serve(1)  # an old version still in use (version policy "all", say) keeps its window
    serve(6)
    serve(6)  # (dropping happens before an update: version 6 is among the newest from now)
    kept = sorted(v for _, v in drifts.trackers)
    assert kept == [1, 5, 6], kept  # idle and not among the newest: dropped
    assert len(kept) <= KEEP_NEWEST + 1
    figures = {(m, v) for m, v, _, _ in drifts.figures()}  # type: ignore[misc]
    assert figures == {(NAME, 1), (NAME, 5), (NAME, 6)}
    tracked = drifts.trackers[(NAME, 1)]
    assert tracked is not None and tracked.size == 8  # its window went on
    assert np.isfinite([psi for _, psi in tracked.psi()]).all()
