"""One training loop for every network, classifiers and forecasters (an :class:`Objective`
each): mini-batches, validation each epoch, early stopping on validation loss with the best
weights restored, a progress bar per epoch; the same loop in every process of a torchrun
group, with checkpoints to resume from."""

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
from training.distributed import SINGLE, EpochOrder, Group, shares

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


@dataclass(frozen=True)
class Objective:
    """What the loop minimizes and reports: ``loss(outputs, targets)``, the mean over a
    batch; ``hits(outputs, targets)``, a classifier's correct predictions (None: no accuracy);
    the gradients' norm clipped to ``clip_norm`` when given."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    hits: Callable[[torch.Tensor, torch.Tensor], int] | None = None
    clip_norm: float | None = None


def _correct(logits: torch.Tensor, target: torch.Tensor) -> int:
    return int((logits.argmax(1) == target).sum())


CLASSIFY = Objective(nn.functional.cross_entropy, _correct)


class Streams:
    """The random streams of this process's shares of a step (``training/distributed.py``):
    share ``s`` draws its dropout masks from torch's global generator seeded ``seed + s`` and
    its augmentation from a generator seeded ``seed + s``, whichever process computes it. A
    single process in one share keeps torch's global stream as seeded before the network was
    built: nothing changes without torchrun or micro-batches."""

    def __init__(self, seed: int, ids: range, reseed: bool) -> None:
        self.generators = [torch.Generator().manual_seed(seed + s) for s in ids]
        self.dropout = [
            torch.manual_seed(seed + s).get_state() if reseed else torch.get_rng_state()
            for s in ids
        ]

    def enter(self, share: int) -> torch.Generator:
        """Share ``share``'s streams: torch's global one set, the augmentation one returned."""
        torch.set_rng_state(self.dropout[share])
        return self.generators[share]

    def leave(self, share: int) -> None:
        self.dropout[share] = torch.get_rng_state()


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
    objective: Objective = CLASSIFY,
) -> History:
    """Train ``net`` in place; on return it holds the weights of the best validation epoch.

    In a torchrun ``group`` every process runs this same loop on its share of each epoch
    (``training/distributed.py``); with a run ``folder`` it checkpoints every epoch and
    resumes from the last checkpoint there. ``config.micro_batches`` shares per process
    and step: each is forwarded on its own and their gradients accumulated, and only the
    first share's batch-norm statistics are kept (DistributedDataParallel keeps rank 0's)."""
    rng = np.random.default_rng(config.seed)
    ids = shares(group, config.micro_batches)
    streams = Streams(config.seed, ids, reseed=group.world_size * config.micro_batches > 1)
    optimizer = make_optimizer(net, config)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=max(1, config.patience // 3)
    )
    order = EpochOrder(len(y_train), config.batch_size, config.seed, group, rng, len(ids))
    history = History()
    best_loss, best_state, stale = float("inf"), copy.deepcopy(net.state_dict()), 0
    first_epoch, stopped, elapsed = 1, False, 0.0
    resumed = folder.load() if folder is not None else None
    if folder is not None and resumed is not None:
        state, saved = resumed
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = History(**state["history"])
        best_loss, best_state, stale = state["best_loss"], state["best_model"], state["stale"]
        first_epoch, stopped, elapsed = state["next_epoch"], state["stopped"], state["elapsed"]
        streams.dropout = set_random_state(saved, streams.generators, rng)
        _say(group, f"resuming from the checkpoint of epoch {first_epoch - 1} in {folder.path}")
    model = group.wrap(net)
    started = time.perf_counter() - elapsed
    for epoch in range(first_epoch, config.epochs + 1):
        if stopped:
            break
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(
            order.steps(epoch),
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            leave=False,
            disable=None if group.main else True,
        )
        for step in bar:
            optimizer.zero_grad(set_to_none=True)
            kept: list[torch.Tensor] = []
            for share, index in enumerate(step):
                generator = streams.enter(share)
                inputs = collate(x_train, index)
                if augment is not None:
                    inputs = augment(inputs, generator)
                inputs = tuple(t.to(group.device) for t in inputs)
                target = torch.from_numpy(y_train[index]).to(group.device)
                outputs = model(*inputs)
                loss = objective.loss(outputs, target)
                torch.autograd.backward(loss / len(step))
                streams.leave(share)
                if share == 0 and len(step) > 1:
                    kept = [buffer.detach().clone() for buffer in net.buffers()]
                total_loss += loss.item() * len(index)
                correct += 0 if objective.hits is None else objective.hits(outputs, target)
                seen += len(index)
            for buffer, value in zip(net.buffers(), kept, strict=False):
                buffer.copy_(value)
            if objective.clip_norm is not None:
                nn.utils.clip_grad_norm_(net.parameters(), objective.clip_norm)
            optimizer.step()
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        sums = group.sum([total_loss, correct, seen])  # over every process's share
        train_loss, train_acc = sums[0] / sums[2], sums[1] / sums[2]
        group.sync_buffers(net)
        val_loss, val_acc = validate(net, x_val, y_val, group, objective)
        scheduler.step(val_loss)
        history.train_loss.append(train_loss)
        history.val_loss.append(val_loss)
        if val_acc is not None:
            history.train_acc.append(train_acc)
            history.val_acc.append(val_acc)
        improved = val_loss < best_loss - 1e-6
        if improved:
            best_loss, best_state, stale = val_loss, copy.deepcopy(net.state_dict()), 0
            history.best_epoch = epoch
        else:
            stale += 1
        accuracy = ("", "") if val_acc is None else (f" acc {train_acc:.4f}", f" acc {val_acc:.4f}")
        _say(
            group,
            f"epoch {epoch:3d}  train loss {train_loss:.4f}{accuracy[0]}"
            f"  val loss {val_loss:.4f}{accuracy[1]}"
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
            folder.save(state, random_state(streams.dropout, streams.generators, rng))
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
    objective: Objective = CLASSIFY,
) -> tuple[float, float | None]:
    """Loss and accuracy (None without ``objective.hits``) over the whole validation split:
    each process takes its share and the sums are reduced over all of them, so every process
    gets the same figures."""
    part = group.part(len(y_val)) if group.distributed else np.arange(len(y_val))
    outputs = torch.from_numpy(
        predict_logits(net, take(x_val, part) if group.distributed else x_val)
    )
    target = torch.from_numpy(y_val[part])
    loss = objective.loss(outputs, target).item()
    hits = 0 if objective.hits is None else objective.hits(outputs, target)
    total_loss, total_hits, n = group.sum([loss * len(part), hits, len(part)])
    if group.distributed:
        loss = total_loss / n
    return loss, None if objective.hits is None else total_hits / n


def _say(group: Group, line: str) -> None:
    if group.main:
        tqdm.write(line)
