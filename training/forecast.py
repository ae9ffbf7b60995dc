"""The forecasters: an LSTM and a GRU reading a window of W past weekly CO2 values and
predicting the next H, trained, exported, evaluated against two baselines and published.

``python -m training forecast <co2-lstm|co2-gru|all> [--quick] [--epochs N] ...``

W = 104 weeks (two yearly cycles: the network sees the season twice and the rise from one
year to the next) and H = 13 weeks (a quarter ahead, a quarter of the season: far enough to
need the seasonal shape, near enough to be useful). The test figures come from a rolling
origin over the test part: every week whose next H values are all in the test part is an
origin; the exported graph, the seasonal naive forecast and additive Holt-Winters (fitted on
the values before the test part, then run forward) forecast from each, and MAE, RMSE and MASE
are reported per horizon step and over all steps."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from modelrepo import (
    Forecast,
    ForecastErrors,
    ModelCard,
    TensorSpec,
    publish,
)
from training import evaluate, export, plots, series
from training.checkpoint import RunFolder, open_run
from training.config import TrainConfig
from training.distributed import SINGLE, Group, publish_from_rank_zero
from training.errors import ConfigError
from training.loop import History, Objective, train
from training.nets import Forecaster, Normalize
from training.publish import explain_baseline, stage, trained_provenance

WINDOW, HORIZON = 104, 13
QUICK_TRAIN_WINDOWS = 256


@dataclass(frozen=True)
class ForecastRecipe:
    name: str
    cell: Literal["lstm", "gru"]
    description: str
    defaults: TrainConfig
    window: int = WINDOW
    horizon: int = HORIZON


def _recipe(cell: Literal["lstm", "gru"]) -> ForecastRecipe:
    return ForecastRecipe(
        name=f"co2-{cell}",
        cell=cell,
        description=f"{cell.upper()} forecasting the next {HORIZON} weekly Mauna Loa CO2 "
        f"values (ppm) from the last {WINDOW}",
        defaults=TrainConfig(
            epochs=80,
            batch_size=32,
            lr=3e-3,
            weight_decay=1e-4,
            dropout=0.0,
            patience=12,
            hidden=32,
            cell=cell,
        ),
    )


FORECASTERS: dict[str, ForecastRecipe] = {r.name: r for r in (_recipe("lstm"), _recipe("gru"))}


@dataclass
class Windows:
    """The training, validation and test windows ``x [n, W]`` and targets ``y [n, H]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    test_origins: np.ndarray


def make_windows(
    data: series.Series,
    recipe: ForecastRecipe,
    quick: bool,
    seed: int,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> Windows:
    """Windows whose targets lie inside each part (``extra``: more training windows, e.g.
    from feedback); ``quick`` keeps a random subset of the training windows."""
    w, h, v = recipe.window, recipe.horizon, data.values
    x_train, y_train = series.windows(v, series.origins(0, data.train_end, w, h), w, h)
    if quick:
        keep = np.sort(np.random.default_rng(seed).permutation(len(x_train))[:QUICK_TRAIN_WINDOWS])
        x_train, y_train = x_train[keep], y_train[keep]
    if extra is not None and len(extra[0]):
        x_train = np.concatenate([x_train, extra[0].astype(np.float32)])
        y_train = np.concatenate([y_train, extra[1].astype(np.float32)])
    x_val, y_val = series.windows(v, series.origins(data.train_end, data.val_end, w, h), w, h)
    at = series.origins(data.val_end, len(v), w, h)
    x_test, y_test = series.windows(v, at, w, h)
    return Windows(x_train, y_train, x_val, y_val, x_test, y_test, at)


def build(recipe: ForecastRecipe, x: np.ndarray, y: np.ndarray, config: TrainConfig) -> Forecaster:
    """The network with its scaling fitted on the training windows only."""
    relative = torch.from_numpy(x - x[:, -1:])
    change = torch.from_numpy(y - x[:, -1:])
    return Forecaster(
        Normalize(relative.mean().reshape(()), relative.std().reshape(())),
        Normalize(change.mean(0), change.std(0)),
        recipe.cell,
        config.hidden,
        recipe.horizon,
        dropout=config.dropout,
    )


@torch.no_grad()
def predict(net: nn.Module, x: np.ndarray) -> np.ndarray:
    net.eval()
    return np.asarray(net(torch.from_numpy(x)).numpy())


def scaled_mse(net: Forecaster) -> Objective:
    """Mean squared error in units of each step's training spread (every step counts), the
    gradients' norm clipped to 1."""

    def loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        error: torch.Tensor = (((predicted - target) / net.denormalize.std) ** 2).mean()
        return error

    return Objective(loss, clip_norm=1.0)


def fit(
    net: Forecaster,
    w: Windows,
    config: TrainConfig,
    group: Group = SINGLE,
    folder: RunFolder | None = None,
) -> History:
    """Mini-batch training with the best validation epoch's weights restored, early stopping
    after ``patience`` epochs without improvement, the learning rate halved on a plateau:
    the classifiers' loop (``training/loop.py``), in every process of a torchrun group."""
    return train(
        net,
        w.x_train,
        w.y_train,
        w.x_val,
        w.y_val,
        config,
        group=group,
        folder=folder,
        objective=scaled_mse(net),
    )


def test_errors(
    data: series.Series, w: Windows, forecast: np.ndarray
) -> tuple[list[ForecastErrors], dict[str, np.ndarray]]:
    """The model's errors, then seasonal naive's and Holt-Winters' on the same origins."""
    scale = series.mase_scale(data.values, data.val_end)
    h = w.y_test.shape[1]
    forecasts = {
        "model": forecast,
        "seasonal-naive": series.seasonal_naive(data.values, w.test_origins, h),
        "holt-winters": series.holt_winters(data.values, data.val_end, w.test_origins, h),
    }
    what = {
        "model": "the exported graph",
        "seasonal-naive": f"the value {series.SEASON} weeks before each target",
        "holt-winters": "statsmodels ExponentialSmoothing, additive trend and yearly season, "
        "fitted on the weeks before the test part, run forward without refitting",
    }
    return [series.errors(m, what[m], f, w.y_test, scale) for m, f in forecasts.items()], forecasts


@dataclass
class Trained:
    """A trained forecaster (in every process of a torchrun group), not yet exported."""

    data: series.Series
    windows: Windows
    net: Forecaster
    history: History
    feedback: int  # extra training windows
    group: Group
    run_id: str | None = None  # the run folder's: recorded in run.json


def run(
    recipe: ForecastRecipe,
    config: TrainConfig,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[ModelCard, Path, History]:
    """Train (on ``extra`` windows too, e.g. from feedback), export with the parity check,
    evaluate the exported graph and stage it; returns the card (as version 1), the staging
    folder and the history (:func:`publish_staged` publishes it)."""
    trained = train_forecaster(recipe, config, extra)
    return (*package(recipe, config, trained), trained.history)


def train_forecaster(
    recipe: ForecastRecipe,
    config: TrainConfig,
    extra: tuple[np.ndarray, np.ndarray] | None = None,
    group: Group = SINGLE,
    folder: RunFolder | None = None,
) -> Trained:
    """Seed, make the windows and train (checkpointed into ``folder`` and resumed from it):
    the part every process of a torchrun group runs."""
    config.validate()
    group.local_batch(config.batch_size, config.micro_batches)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    torch.set_num_threads(config.threads)
    data = series.load_co2()
    w = make_windows(data, recipe, config.quick, config.seed, extra)
    print(
        f"{recipe.name}: {data.name}, {len(w.x_train)} train / {len(w.x_val)} validation / "
        f"{len(w.x_test)} test windows (W={recipe.window}, H={recipe.horizon})"
        f"{' (quick)' if config.quick else ''}",
        flush=True,
    )
    net = build(recipe, w.x_train, w.y_train, config)
    run_id = None if folder is None else folder.run_id()
    history = fit(net, w, config, group, folder)
    feedback = 0 if extra is None else len(extra[0])
    return Trained(data, w, net, history, feedback, group, run_id)


def package(
    recipe: ForecastRecipe, config: TrainConfig, trained: Trained
) -> tuple[ModelCard, Path]:
    """Export with the parity check, evaluate the exported graph and stage it (rank 0's
    part); returns the card (as version 1) and the staging folder."""
    data, w, net, history, group = (
        trained.data, trained.windows, trained.net, trained.history, trained.group
    )  # fmt: skip
    staging = Path(tempfile.mkdtemp(prefix=f"nnserve-{recipe.name}-"))
    try:
        spec = TensorSpec(
            name="window",
            datatype="FP32",
            shape=[-1, recipe.window],
            description=f"the last {recipe.window} weekly values in {data.units}, oldest first",
        )
        staged = stage(
            net, spec, torch.from_numpy(w.x_train[:2]), w.x_test, [w.x_test[:4]],
            "regression", staging,
        )  # fmt: skip
        served = export.run(staged.session, w.x_test)["predictions"]
        errors, forecasts = test_errors(data, w, served)
        plots.learning_curves(history, recipe.name, staging / "learning_curve.png")
        plots.forecast_vs_actual(
            data.values, w.test_origins, forecasts, recipe.name, staging / "forecast.png"
        )
        plots.errors_by_step(errors, data.units, recipe.name, staging / "error_by_step.png")
        run_record = {
            "config": config.as_dict(),
            "distributed": group.describe(config.batch_size, config.lr),
            "history": history.__dict__,
            "run_id": trained.run_id,
        }
        (staging / "run.json").write_text(json.dumps(run_record, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    names = [f"t-{recipe.window - i}" for i in range(recipe.window)]
    card = ModelCard(
        name=recipe.name,
        version=1,
        kind=recipe.cell,
        task="regression",
        description=recipe.description,
        inputs=[spec],
        outputs=[
            o.model_copy(update={"description": f"the next {recipe.horizon} values in ppm"})
            for o in staged.outputs
        ],
        provenance=trained_provenance(
            data,
            (len(w.x_train), len(w.x_val), len(w.x_test)),
            f"{data.split}; counts are windows",
            config,
            net,
            trained.feedback,
            (history.epochs_run, history.best_epoch),
            round(history.wall_time_s, 2),
            group,
        ),
        onnx_sha256=staged.sha256,
        parity=staged.parity,
        reference=staged.reference,
        baseline=evaluate.feature_baselines(w.x_train, names),
        explain_baseline=explain_baseline(w.x_train, spec),
        forecast=Forecast(
            window=recipe.window,
            horizon=recipe.horizon,
            units=data.units,
            step=data.step,
            season=series.SEASON,
            evaluation=f"rolling origin over the test part ({data.split}): every week whose "
            f"next {recipe.horizon} values are in the test part",
            origins=len(w.test_origins),
            mase_scale=series.mase_scale(data.values, data.val_end),
            errors=errors,
        ),
    )
    return card, staging


def publish_staged(card: ModelCard, staging: Path, repository: Path) -> tuple[int, Path]:
    """Publish a staged forecaster atomically as the next version; the staging folder goes."""

    def write(folder: Path) -> None:
        for path in staging.iterdir():
            shutil.copy2(path, folder / path.name)

    try:
        version, folder = publish(
            repository, card.name, write, lambda v: card.model_copy(update={"version": v})
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    assert card.forecast is not None and card.parity is not None
    model, *baselines = card.forecast.errors
    print(
        f"{card.name}: published version {version} at {folder}: test MASE {model.mase:.3f} "
        f"(MAE {model.mae:.3f} {card.forecast.units}; "
        + ", ".join(f"{b.method} {b.mase:.3f}" for b in baselines)
        + f"), parity {card.parity.max_abs_diff:.2e}",
        flush=True,
    )
    return version, folder


def parse_args(argv: list[str], common: argparse.ArgumentParser) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training forecast",
        parents=[common],
        description="Train, export and publish a CO2 forecaster (an LSTM or a GRU), with its "
        "test errors beside seasonal naive's and Holt-Winters' in model.json.",
    )
    parser.add_argument("model", choices=[*FORECASTERS, "all"])
    args = parser.parse_args(argv)
    args.command = "forecast"
    return args


def command(args: argparse.Namespace, given: dict[str, object], group: Group = SINGLE) -> None:
    """Train and publish each forecaster asked for; in a torchrun group every process trains
    and rank 0 alone exports, evaluates and publishes, as for the classifiers, with a run
    folder under ``--checkpoint-dir`` to resume from."""
    names = list(FORECASTERS) if args.model == "all" else [args.model]
    for name in names:
        recipe = FORECASTERS[name]
        if given.get("cell") not in (None, recipe.cell):
            raise ConfigError(f"{name} is a {recipe.cell.upper()}: --cell does not apply")
        config = recipe.defaults.replace(**given).validate()
        folder, done = open_run(args.checkpoint_dir, name, group, config.as_dict(), args.repository)
        if done is not None:
            continue
        trained = train_forecaster(recipe, config, group=group, folder=folder)
        publish_from_rank_zero(
            group,
            name,
            partial(package, recipe, config, trained),
            partial(_publish, repository=args.repository, folder=folder),
            lambda staged: shutil.rmtree(staged[1], ignore_errors=True),
        )


def _publish(staged: tuple[ModelCard, Path], repository: Path, folder: RunFolder | None) -> int:
    version = publish_staged(*staged, repository)[0]
    if folder is not None:
        folder.mark_published(version, repository)
    return version
