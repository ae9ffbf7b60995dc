"""One training loop for all three networks: mini-batches, validation each epoch, early
stopping on validation loss with the best weights restored, a progress bar per epoch."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.batches import Inputs, collate, minibatches
from training.config import TrainConfig

Augment = Callable[[Inputs, torch.Generator], Inputs]


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    best_epoch: int = 0
    wall_time_s: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)


def make_optimizer(net: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            net.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)


@torch.no_grad()
def predict_logits(
    net: nn.Module, x: np.ndarray | list[np.ndarray], batch_size: int = 512
) -> np.ndarray:
    """Logits for every sample of ``x``, in order, with the network in eval mode."""
    net.eval()
    parts = [net(*collate(x, index)).numpy() for index in minibatches(len(x), batch_size, None)]
    return np.concatenate(parts)


def loss_and_accuracy(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    loss = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item()
    return loss, float((logits.argmax(1) == y).mean())


def train(
    net: nn.Module,
    x_train: np.ndarray | list[np.ndarray],
    y_train: np.ndarray,
    x_val: np.ndarray | list[np.ndarray],
    y_val: np.ndarray,
    config: TrainConfig,
    augment: Augment | None = None,
) -> History:
    """Train ``net`` in place; on return it holds the weights of the best validation epoch."""
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(net, config)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=max(1, config.patience // 3)
    )
    loss_fn = nn.CrossEntropyLoss()
    history = History()
    best_loss, best_state, stale = float("inf"), copy.deepcopy(net.state_dict()), 0
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        net.train()
        total_loss, correct, seen = 0.0, 0, 0
        steps = list(minibatches(len(y_train), config.batch_size, rng))
        bar = tqdm(
            steps, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False, disable=None
        )
        for index in bar:
            inputs = collate(x_train, index)
            if augment is not None:
                inputs = augment(inputs, generator)
            target = torch.from_numpy(y_train[index])
            optimizer.zero_grad(set_to_none=True)
            logits = net(*inputs)
            loss = loss_fn(logits, target)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(1) == target).sum())
            seen += len(index)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
        val_loss, val_acc = loss_and_accuracy(predict_logits(net, x_val), y_val)
        scheduler.step(val_loss)
        history.train_loss.append(total_loss / seen)
        history.train_acc.append(correct / seen)
        history.val_loss.append(val_loss)
        history.val_acc.append(val_acc)
        improved = val_loss < best_loss - 1e-6
        if improved:
            best_loss, best_state, stale = val_loss, copy.deepcopy(net.state_dict()), 0
            history.best_epoch = epoch
        else:
            stale += 1
        tqdm.write(
            f"epoch {epoch:3d}  train loss {total_loss / seen:.4f} acc {correct / seen:.4f}"
            f"  val loss {val_loss:.4f} acc {val_acc:.4f}"
            f"  {time.perf_counter() - started:6.1f}s{'  *' if improved else ''}"
        )
        if stale >= config.patience:
            tqdm.write(
                f"early stop: no better validation loss for {config.patience} epochs; "
                f"restoring epoch {history.best_epoch}"
            )
            break
    net.load_state_dict(best_state)
    net.eval()
    history.wall_time_s = time.perf_counter() - started
    return history
