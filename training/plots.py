"""The run's pictures: learning curves and the test confusion matrix (PNG, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from training.loop import History


def learning_curves(history: History, title: str, path: Path) -> None:
    epochs = np.arange(1, history.epochs_run + 1)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, train, val, what in (
        (loss_ax, history.train_loss, history.val_loss, "loss"),
        (acc_ax, history.train_acc, history.val_acc, "accuracy"),
    ):
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
