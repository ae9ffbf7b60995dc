"""One training loop for all three networks: mini-batches, validation each epoch, early
stopping on validation loss with the best weights restored, a progress bar per epoch; the
same loop in every process of a torchrun group, with checkpoints to resume from."""

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
from training.checkpoint import RunFolder, random_state, set_random_state
from training.config import TrainConfig
from training.data import take
from training.distributed import SINGLE, EpochOrder, Group

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
    device = next(net.parameters()).device
    parts = [
        net(*(t.to(device) for t in collate(x, index))).cpu().numpy()
        for index in minibatches(len(x), batch_size, None)
    ]
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
    group: Group = SINGLE,
    folder: RunFolder | None = None,
) -> History:
    """Train ``net`` in place; on return it holds the weights of the best validation epoch.

    In a torchrun ``group`` every process runs this same loop on its share of each epoch
    (``training/distributed.py``); with a run ``folder`` it checkpoints every epoch and
    resumes from the last checkpoint there."""
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed + group.rank)
    if group.distributed:  # dropout masks of their own per process
        torch.manual_seed(config.seed + group.rank)
    optimizer = make_optimizer(net, config)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=max(1, config.patience // 3)
    )
    loss_fn = nn.CrossEntropyLoss()
    order = EpochOrder(len(y_train), config.batch_size, config.seed, group, rng)
    history = History()
    best_loss, best_state, stale = float("inf"), copy.deepcopy(net.state_dict()), 0
    first_epoch, stopped, elapsed = 1, False, 0.0
    resumed = folder.load() if folder is not None else None
    if folder is not None and resumed is not None:
        state, streams = resumed
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = History(**state["history"])
        best_loss, best_state, stale = state["best_loss"], state["best_model"], state["stale"]
        first_epoch, stopped, elapsed = state["next_epoch"], state["stopped"], state["elapsed"]
        set_random_state(streams, generator, rng)
        _say(group, f"resuming from the checkpoint of epoch {first_epoch - 1} in {folder.path}")
    model = group.wrap(net)
    started = time.perf_counter() - elapsed
    for epoch in range(first_epoch, config.epochs + 1):
        if stopped:
            break
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        steps = order.batches(epoch)
        bar = tqdm(
            steps,
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            leave=False,
            disable=None if group.main else True,
        )
        for index in bar:
            inputs = collate(x_train, index)
            if augment is not None:
                inputs = augment(inputs, generator)
            inputs = tuple(t.to(group.device) for t in inputs)
            target = torch.from_numpy(y_train[index]).to(group.device)
            optimizer.zero_grad(set_to_none=True)
            logits = model(*inputs)
            loss = loss_fn(logits, target)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(1) == target).sum())
            seen += len(index)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
        sums = group.sum([total_loss, correct, seen])  # over every process's share
        train_loss, train_acc = sums[0] / sums[2], sums[1] / sums[2]
        group.sync_buffers(net)
        val_loss, val_acc = validate(net, x_val, y_val, group)
        scheduler.step(val_loss)
        history.train_loss.append(train_loss)
        history.train_acc.append(train_acc)
        history.val_loss.append(val_loss)
        history.val_acc.append(val_acc)
        improved = val_loss < best_loss - 1e-6
        if improved:
            best_loss, best_state, stale = val_loss, copy.deepcopy(net.state_dict()), 0
            history.best_epoch = epoch
        else:
            stale += 1
        _say(
            group,
            f"epoch {epoch:3d}  train loss {train_loss:.4f} acc {train_acc:.4f}"
            f"  val loss {val_loss:.4f} acc {val_acc:.4f}"
            f"  {time.perf_counter() - started:6.1f}s{'  *' if improved else ''}",
        )
        stopped = bool(group.share(stale >= config.patience))  # rank 0 decides for all
        if stopped:
            _say(
                group,
                f"early stop: no better validation loss for {config.patience} epochs; "
                f"restoring epoch {history.best_epoch}",
            )
        if folder is not None:
            state = {
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": dict(history.__dict__),
                "best_loss": best_loss,
                "best_model": best_state,
                "stale": stale,
                "next_epoch": epoch + 1,  # the DistributedSampler's next epoch
                "stopped": stopped,
                "elapsed": time.perf_counter() - started,
            }
            folder.save(state, random_state(generator, rng))
    net.load_state_dict(best_state)
    net.to("cpu")
    net.eval()
    history.wall_time_s = time.perf_counter() - started
    return history


def validate(
    net: nn.Module,
    x_val: np.ndarray | list[np.ndarray],
    y_val: np.ndarray,
    group: Group,
) -> tuple[float, float]:
    """Loss and accuracy over the whole validation split: each process takes its share and
    the sums are reduced over all of them, so every process gets the same figures."""
    if not group.distributed:
        return loss_and_accuracy(predict_logits(net, x_val), y_val)
    part = group.part(len(y_val))
    logits = torch.from_numpy(predict_logits(net, take(x_val, part)))
    target = torch.from_numpy(y_val[part])
    loss_sum = nn.functional.cross_entropy(logits, target, reduction="sum").item()
    correct = float((logits.argmax(1) == target).sum())
    total_loss, total_correct, n = group.sum([loss_sum, correct, len(part)])
    return total_loss / n, total_correct / n


def _say(group: Group, line: str) -> None:
    if group.main:
        tqdm.write(line)
