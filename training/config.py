"""Every training setting in one place, with what it does. Saved into ``model.json``.

Each field's ``help`` is also its ``python -m training --<field-name>`` option's help: the
command line is derived from this class (``training/cli.py``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from training.errors import ConfigError

T = TypeVar("T")


def _setting(default: T, help: str) -> T:
    """A field with its default and the one description of what it does."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _setting(60, "maximum epochs; early stopping usually ends sooner")
    batch_size: int = _setting(32, "samples per optimizer step")
    micro_batches: int = _setting(
        1,
        "split each step's batch into this many shares, batch norm, dropout and augmentation "
        "on their own, gradients accumulated: one process computes what that many torchrun "
        "processes would",
    )
    lr: float = _setting(1e-3, "learning rate")
    weight_decay: float = _setting(
        1e-4, "L2 penalty (AdamW-style decoupled for adam, classic for sgd)"
    )
    dropout: float = _setting(0.2, "dropout probability in hidden layers")
    optimizer: Literal["adam", "sgd"] = _setting("adam", "adam (AdamW) or sgd (Nesterov)")
    momentum: float = _setting(0.9, "SGD momentum, Nesterov when > 0 (sgd only)")
    patience: int = _setting(8, "epochs without a better validation loss before stopping")
    val_fraction: float = _setting(
        0.15, "share of the official training split held out for validation"
    )
    seed: int = _setting(0, "seeds python, numpy and torch: a rerun gives the same figures")
    hidden: int = _setting(64, "width of the hidden layer(s) / LSTM state size")
    cell: Literal["lstm", "gru"] = _setting(
        "lstm", "the recurrent cell of sequence models: lstm or gru"
    )
    threads: int = _setting(2, "torch intra-op threads")
    quick: bool = _setting(
        False,
        "a small stratified subset, same code path, for tests (on the command line also "
        "2 epochs unless --epochs is given)",
    )

    def validate(self) -> TrainConfig:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.micro_batches >= 1, f"micro-batches must be >= 1, got {self.micro_batches}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (
                self.optimizer in ("adam", "sgd"),
                f"optimizer must be adam or sgd, got {self.optimizer!r}",
            ),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (
                0 < self.val_fraction < 0.5,
                f"validation fraction must be in (0, 0.5), got {self.val_fraction}",
            ),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.hidden >= 1, f"hidden size must be >= 1, got {self.hidden}"),
            (self.threads >= 1, f"threads must be >= 1, got {self.threads}"),
            (self.cell in ("lstm", "gru"), f"cell must be lstm or gru, got {self.cell!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
