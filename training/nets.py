"""The three networks. Each starts with a :class:`Normalize` layer whose buffers are fitted on
the training split, so the exported graph takes raw values and serving never repeats the math.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


class Normalize(nn.Module):
    """``(x - mean) / std`` with fitted, saved (non-trainable) buffers."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float().clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class MLP(nn.Module):
    """Tabular rows ``[B, F]`` → class logits."""

    def __init__(
        self,
        normalize: Normalize,
        n_features: int,
        hidden: tuple[int, ...],
        n_classes: int,
        dropout: float,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [normalize]
        width = n_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_classes))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.body(x)
        return logits


class CNN(nn.Module):
    """Gray images ``[B, H, W]`` of raw pixel values 0-255 → class logits."""

    def __init__(
        self,
        normalize: Normalize,
        channels: tuple[int, ...],
        hidden: int,
        n_classes: int,
        dropout: float,
        side: int = 28,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        blocks: list[nn.Module] = []
        width = 1
        for size in channels:
            blocks += [
                nn.Conv2d(width, size, 3, padding=1, bias=False),
                nn.BatchNorm2d(size),
                nn.ReLU(),
                nn.Conv2d(size, size, 3, padding=1, bias=False),
                nn.BatchNorm2d(size),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            width = size
            side //= 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(width * side * side, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.features(self.normalize(x).unsqueeze(1)))
        return logits


class SequenceLSTM(nn.Module):
    """Sequences ``[B, T, C]`` → class logits from the final hidden state (of an LSTM, or of
    a GRU with ``cell="gru"``).

    Training passes ``lengths`` for padded batches and the LSTM runs on a packed sequence, so
    padding never reaches the state. The exported graph is traced without ``lengths``: it takes
    batches of one length (any length), which is how the service groups them.
    """

    def __init__(
        self,
        normalize: Normalize,
        n_channels: int,
        hidden: int,
        layers: int,
        bidirectional: bool,
        n_classes: int,
        dropout: float,
        cell: Literal["lstm", "gru"] = "lstm",
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.lstm = (nn.LSTM if cell == "lstm" else nn.GRU)(
            n_channels,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.directions = 2 if bidirectional else 1
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(hidden * self.directions, n_classes)
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.normalize(x)
        if lengths is None:
            _, state = self.lstm(x)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, state = self.lstm(packed)
        h_n = state[0] if isinstance(state, tuple) else state  # an LSTM's (h_n, c_n)
        last = h_n[-self.directions :]  # the top layer, every direction: [dirs, B, H]
        logits: torch.Tensor = self.head(torch.cat(list(last), dim=1))
        return logits


class WithProbabilities(nn.Module):
    """The exported graph: ``logits`` and their ``softmax`` as two named outputs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, torch.softmax(logits, dim=1)


class Forecaster(nn.Module):
    """A window ``[B, W]`` of raw past values → the next ``H`` values ``[B, H]``, same units.

    The window is taken relative to its last value and scaled by ``normalize`` (fitted on
    the training windows), so the network sees the shape of the recent past, not the level
    (the series may leave its training range); the head predicts each future value's change
    from that last value, scaled back by ``denormalize``'s fitted buffers. ``cell``: an LSTM
    or a GRU over the window, one step per value; the final state feeds the head."""

    def __init__(
        self,
        normalize: Normalize,
        denormalize: Normalize,
        cell: Literal["lstm", "gru"],
        hidden: int,
        horizon: int,
        layers: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.denormalize = denormalize  # its mean and std un-scale the head's output
        recurrent = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = recurrent(
            1, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, horizon))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = x[:, -1:]
        steps = self.normalize(x - last).unsqueeze(-1)
        states, _ = self.rnn(steps)
        change = self.head(states[:, -1])
        out: torch.Tensor = last + change * self.denormalize.std + self.denormalize.mean
        return out
