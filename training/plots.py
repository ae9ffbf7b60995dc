"""The run's pictures: learning curves and the test confusion matrix (PNG, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from modelrepo import ForecastErrors
from training.loop import History


def learning_curves(history: History, title: str, path: Path) -> None:
    """Loss (and accuracy, for a classifier: a forecaster's history has none) per epoch."""
    epochs = np.arange(1, history.epochs_run + 1)
    panels = [(history.train_loss, history.val_loss, "loss")]
    if history.train_acc:
        panels.append((history.train_acc, history.val_acc, "accuracy"))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5 * len(panels), 4), constrained_layout=True, squeeze=False
    )
    for ax, (train, val, what) in zip(axes[0], panels, strict=True):
        ax.plot(epochs, train, label=f"train {what}")
        ax.plot(epochs, val, label=f"validation {what}")
        ax.axvline(history.best_epoch, color="grey", linestyle=":", label="best epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title}: learning curves")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def confusion(matrix: list[list[int]], labels: list[str], title: str, path: Path) -> None:
    counts = np.asarray(matrix)
    size = 2.5 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size, size), constrained_layout=True)
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (row, col), value in np.ndenumerate(counts):
        ax.text(
            col,
            row,
            str(value),
            ha="center",
            va="center",
            color="white" if value > counts.max() / 2 else "black",
            fontsize=8,
        )
    ax.set_title(f"{title}: test confusion matrix")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def forecast_vs_actual(
    values: np.ndarray,
    origins: np.ndarray,
    forecasts: dict[str, np.ndarray],
    title: str,
    path: Path,
) -> None:
    """The test part's actual values and each method's forecasts 1 step and H steps ahead
    (the forecast for week t made 1 or H weeks before it)."""
    horizon = next(iter(forecasts.values())).shape[1]
    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True, constrained_layout=True)
    for ax, step in zip(axes, (1, horizon), strict=True):
        at = origins + step - 1
        ax.plot(at, values[at], color="black", linewidth=1.5, label="actual")
        for method, forecast in forecasts.items():
            ax.plot(at, forecast[:, step - 1], linewidth=1, label=method)
        ax.set_ylabel("value")
        ax.set_title(f"forecast {step} step{'s' if step > 1 else ''} ahead")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[-1].set_xlabel("week index in the series")
    fig.suptitle(f"{title}: test part, rolling origin")
    fig.savefig(path, dpi=80)
    plt.close(fig)


def errors_by_step(errors: list[ForecastErrors], units: str, title: str, path: Path) -> None:
    """MAE per horizon step of the model and of each baseline."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for e in errors:
        steps = [s.step for s in e.per_step]
        ax.plot(
            steps, [s.mae for s in e.per_step], marker="o", label=f"{e.method} (MASE {e.mase:.2f})"
        )
    ax.set_xlabel("horizon step")
    ax.set_ylabel(f"MAE ({units})")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{title}: test error by horizon step")
    fig.savefig(path, dpi=80)
    plt.close(fig)
