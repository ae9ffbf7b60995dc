"""The forecasters' training path: a ``--quick`` run publishes a checked graph and a card
with the baselines; retraining publishes only a challenger whose test MASE is not worse
(lower is better), with complete actual values from the store as extra training windows;
the vowels classifier also trains with a GRU cell."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from modelrepo import MODEL_FILE, file_sha256, read_card, scan
from predictionlog import Prediction
from predictionlog.sqlite import SQLiteStore
from tests.support.onnx_helpers import reference_max_error, session
from tests.support.paths import MODELS
from tests.training.test_training import png_size

pytestmark = pytest.mark.slow


class Done:
    """What one in-process ``python -m training ...`` gave (the same code as the command,
    without paying torch's import again for each run)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def train(capsys: pytest.CaptureFixture[str]) -> Callable[..., Done]:
    from training.cli import main

    def run(*args: str) -> Done:
        code = main(list(args))
        out, err = capsys.readouterr()
        return Done(code, out, err)

    return run


def test_quick_forecaster_training_publishes_a_checked_graph_and_its_baselines(
    tmp_path: Path, train: Callable[..., Done]
) -> None:
    done = train("forecast", "co2-gru", "--quick", "--repository", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert scan(tmp_path) == {"co2-gru": [1]}
    folder = tmp_path / "co2-gru" / "1"
    card = read_card(folder)
    assert (card.kind, card.task, card.labels, card.metrics) == ("gru", "regression", [], None)
    assert card.onnx_sha256 == file_sha256(folder / MODEL_FILE)
    assert card.parity is not None and card.parity.max_abs_diff <= 1e-4
    assert card.provenance.epochs_run == 2
    forecast = card.forecast
    assert forecast is not None
    assert (forecast.window, forecast.horizon, forecast.units) == (104, 13, "ppm")
    assert [e.method for e in forecast.errors] == ["model", "seasonal-naive", "holt-winters"]
    assert all(len(e.per_step) == 13 for e in forecast.errors)
    assert len(card.baseline) == 104  # input drift: one histogram per window position
    sess = session(folder / MODEL_FILE)
    assert reference_max_error(sess, card) <= card.reference_atol
    for n in (1, 7):  # a dynamic batch axis
        windows = np.full((n, 104), 350.0, dtype=np.float32)
        assert sess.run(["predictions"], {"window": windows})[0].shape == (n, 13)
    for picture in ("learning_curve.png", "forecast.png", "error_by_step.png"):
        width, height = png_size(folder / picture)
        assert width > 200 and height > 200
    assert "test MASE" in done.stdout and "holt-winters" in done.stdout


def log_forecasts(db: Path, windows: np.ndarray, actuals: list[list[float]]) -> None:
    """Forecasts of co2-lstm version 1 logged with ``actuals`` fed back (in two pieces)."""
    store = SQLiteStore(db)
    try:
        store.write_predictions(
            [
                Prediction(f"f{i}", time.time(), "co2-lstm", 1, w, np.zeros(13, np.float32), None)
                for i, w in enumerate(windows)
            ]
        )
        for i, values in enumerate(actuals):
            store.record_actuals(f"f{i}", 0, values[:5], time.time())
            if len(values) > 5:
                store.record_actuals(f"f{i}", 5, values[5:], time.time())
    finally:
        store.close()


def test_retraining_a_forecaster_is_gated_on_its_test_error(
    tmp_path: Path, train: Callable[..., Done]
) -> None:
    from training import series

    root = tmp_path / "models"
    shutil.copytree(MODELS / "co2-lstm", root / "co2-lstm")
    data = series.load_co2()
    v = data.values.astype(np.float32)
    windows = np.stack([v[200:304], v[400:504]])  # training-part windows
    db = tmp_path / "log.db"
    log_forecasts(db, windows, [v[304:317].tolist(), v[504:510].tolist()])  # full, partial
    reports = tmp_path / "reports"
    common = ["--repository", str(root), "--feedback", str(db), "--report-dir", str(reports)]
    # a 2-epoch challenger is far worse than the committed champion: kept
    done = train("retrain", "co2-lstm", "--quick", *common)
    assert done.returncode == 0, done.stderr[-3000:]
    assert scan(root) == {"co2-lstm": [1]}
    (report_path,) = reports.glob("*.json")
    report = json.loads(report_path.read_text())
    assert report["decision"] == "kept champion"
    assert report["feedback"] == {"store": str(db), "examples": 1, "skipped": 1}
    champion = read_card(root / "co2-lstm" / "1").forecast
    assert champion is not None
    assert report["champion"]["mase"] == pytest.approx(champion.model_errors().mase, rel=1e-9)
    assert report["challenger"]["mase"] > report["champion"]["mase"]
    assert "test mase" in report_path.with_suffix(".md").read_text()
    # a tolerance wider than the gap lets the same challenger through
    gap = report["challenger"]["mase"] - report["champion"]["mase"]
    done = train("retrain", "co2-lstm", "--quick", *common, "--tolerance", f"{gap + 0.01}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert scan(root) == {"co2-lstm": [1, 2]}
    card = read_card(root / "co2-lstm" / "2")
    assert card.provenance.hyperparameters["feedback_examples"] == 1
    assert card.forecast is not None
    assert card.forecast.model_errors().mase == pytest.approx(report["challenger"]["mase"])


def test_the_vowels_classifier_trains_with_a_gru_cell(
    tmp_path: Path, train: Callable[..., Done]
) -> None:
    done = train("vowels-lstm", "--quick", "--cell", "gru", "--repository", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    card = read_card(tmp_path / "vowels-lstm" / "1")
    assert card.kind == "gru" and card.provenance.hyperparameters["cell"] == "gru"
    assert "GRU(12, 32" in str(card.provenance.hyperparameters["architecture"])
    assert card.parity is not None and card.parity.max_abs_diff <= 1e-4
