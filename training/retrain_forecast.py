"""Champion/challenger retraining of a forecaster (``python -m training retrain co2-lstm``).

The challenger trains on the base training windows plus every logged forecast whose actual
values are complete (all H steps fed back): its input window and those H values are one more
training window. Forecasts with fewer actual values, of another shape, or whose window is a
test window (the held-out part must stay unseen) are skipped and counted. Champion (the
newest published version) and challenger are scored on the same rolling-origin test windows
through onnxruntime; the challenger is published only if its MASE is at most the champion's
plus the tolerance (lower is better). A JSON and a Markdown report are written either way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from modelrepo import MODEL_FILE, read_card, scan
from predictionlog import open_store
from training import export, series
from training.config import TrainConfig
from training.errors import TrainingError
from training.forecast import ForecastRecipe, make_windows, publish_staged, run, test_errors
from training.retrain import Decision, Outcome, report_decision


def complete_actuals(
    url: str, recipe: ForecastRecipe, held_out: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """(windows, their H actual values, skipped) of every logged forecast fed back in full."""
    unseen = {np.asarray(x, dtype=np.float32).tobytes() for x in held_out}
    store = open_store(url)
    try:
        found = store.with_actuals(recipe.name)
    finally:
        store.close()
    xs, ys, skipped = [], [], 0
    for prediction, actuals in found:
        x = np.asarray(prediction.inputs, dtype=np.float32)
        complete = sorted(actuals) == list(range(recipe.horizon))
        if not complete or x.shape != (recipe.window,) or x.tobytes() in unseen:
            skipped += 1
            continue
        xs.append(x)
        ys.append([actuals[step] for step in range(recipe.horizon)])
    x_fb = np.stack(xs) if xs else np.empty((0, recipe.window), np.float32)
    return x_fb, np.asarray(ys, dtype=np.float32).reshape(-1, recipe.horizon), skipped


def retrain_forecaster(
    recipe: ForecastRecipe,
    config: TrainConfig,
    repository: Path,
    feedback_url: str | None,
    tolerance: float,
    report_dir: Path,
) -> Decision:
    if tolerance < 0:
        raise TrainingError(f"tolerance must be >= 0 (MASE), got {tolerance}")
    versions = scan(repository).get(recipe.name)
    if not versions:
        raise TrainingError(
            f"no published version of {recipe.name} in {repository} to challenge; train one "
            f"first: python -m training forecast {recipe.name}"
        )
    folder = repository / recipe.name / str(versions[-1])
    champion_card = read_card(folder)
    data = series.load_co2()
    w = make_windows(data, recipe, quick=False, seed=config.seed)
    served = export.run(export.session(folder / MODEL_FILE), w.x_test)["predictions"]
    champion = test_errors(data, w, served)[0][0]
    extra, skipped = None, 0
    if feedback_url:
        x_fb, y_fb, skipped = complete_actuals(feedback_url, recipe, w.x_test)
        extra = (x_fb, y_fb)
    card, staging, history = run(recipe, config, extra)
    assert card.forecast is not None
    challenger = card.forecast.model_errors()
    accept = challenger.mase <= champion.mase + tolerance
    if accept:
        version = publish_staged(card, staging, repository)[0]
    else:
        version = champion_card.version
        shutil.rmtree(staging, ignore_errors=True)
    return report_decision(
        Outcome(recipe.name, accept, version, tolerance, "mase"),
        "publish if challenger MASE <= champion MASE + tolerance (lower is better)",
        f"{data.name} test part, {len(w.x_test)} rolling origins",
        (feedback_url, 0 if extra is None else len(extra[0]), skipped),
        {"version": champion_card.version, "mase": champion.mase, "mae": champion.mae,
         "rmse": champion.rmse},
        {"mase": challenger.mase, "mae": challenger.mae, "rmse": challenger.rmse,
         "epochs_run": history.epochs_run, "config": config.as_dict()},
        report_dir,
    )  # fmt: skip
