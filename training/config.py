"""Every training setting in one place, with what it does. Saved into ``model.json``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from training.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60  # upper bound on epochs; early stopping usually ends sooner
    batch_size: int = 32  # samples per optimizer step
    lr: float = 1e-3  # learning rate
    weight_decay: float = 1e-4  # L2 penalty (AdamW-style decoupled for adam, classic for sgd)
    dropout: float = 0.2  # dropout probability in hidden layers
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9  # SGD only (Nesterov)
    patience: int = 8  # epochs without a better validation loss before stopping
    val_fraction: float = 0.15  # share of the official training split held out for validation
    seed: int = 0  # seeds python, numpy and torch: a rerun gives the same figures
    hidden: int = 64  # width of the hidden layer(s) / LSTM state
    threads: int = 2  # torch intra-op threads
    quick: bool = False  # a small stratified subset, same code path (tests)

    def validate(self) -> TrainConfig:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
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
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
