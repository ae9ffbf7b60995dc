"""The three models of DESIGN §1: their data, network, default settings and graph I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from modelrepo import TensorSpec
from training import data
from training.batches import flip_half
from training.config import TrainConfig
from training.loop import Augment
from training.nets import CNN, MLP, Normalize, SequenceLSTM

Samples = np.ndarray | list[np.ndarray]


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: Literal["ann", "cnn", "lstm"]
    description: str
    load: Callable[[], data.Dataset]
    defaults: TrainConfig
    build: Callable[[Samples, int, TrainConfig], nn.Module]  # (x_train, n_classes, config)
    input: TensorSpec
    quick_sizes: tuple[int, int]  # (train, test) samples in --quick runs
    augment: Augment | None = None


def _build_mlp(x: Samples, n_classes: int, config: TrainConfig) -> nn.Module:
    assert isinstance(x, np.ndarray)
    t = torch.from_numpy(x)
    norm = Normalize(t.mean(0), t.std(0))
    return MLP(norm, x.shape[1], (config.hidden, config.hidden // 2), n_classes, config.dropout)


def _build_cnn(x: Samples, n_classes: int, config: TrainConfig) -> nn.Module:
    assert isinstance(x, np.ndarray)
    pixels = torch.from_numpy(x.astype(np.float32))
    norm = Normalize(pixels.mean().reshape(()), pixels.std().reshape(()))
    return CNN(norm, (16, 32), config.hidden, n_classes, config.dropout, side=x.shape[1])


def _build_lstm(x: Samples, n_classes: int, config: TrainConfig) -> nn.Module:
    steps = torch.from_numpy(np.concatenate(list(x)))
    norm = Normalize(steps.mean(0), steps.std(0))
    return SequenceLSTM(
        norm,
        steps.shape[1],
        config.hidden,
        layers=1,
        bidirectional=True,
        n_classes=n_classes,
        dropout=config.dropout,
    )


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="breast-cancer-ann",
            kind="ann",
            description="MLP classifying breast masses as malignant or benign from 30 raw "
            "features of a fine-needle aspirate image",
            load=data.load_breast_cancer,
            defaults=TrainConfig(
                epochs=200,
                batch_size=32,
                lr=1e-3,
                weight_decay=1e-3,
                dropout=0.3,
                patience=20,
                val_fraction=0.2,
                hidden=64,
            ),
            build=_build_mlp,
            input=TensorSpec(
                name="features",
                datatype="FP32",
                shape=[-1, 30],
                description="raw feature values, one row per sample",
            ),
            quick_sizes=(200, 143),
        ),
        Recipe(
            name="fashion-cnn",
            kind="cnn",
            description="CNN classifying 28x28 grayscale Fashion-MNIST article images",
            load=data.load_fashion_mnist,
            defaults=TrainConfig(
                epochs=12,
                batch_size=128,
                lr=2e-3,
                weight_decay=5e-4,
                dropout=0.3,
                patience=3,
                val_fraction=0.1,
                hidden=128,
            ),
            build=_build_cnn,
            input=TensorSpec(
                name="images",
                datatype="FP32",
                shape=[-1, 28, 28],
                description="raw pixel values 0-255, row-major",
                min_value=0,
                max_value=255,
            ),
            quick_sizes=(1000, 300),
            augment=flip_half,
        ),
        Recipe(
            name="vowels-lstm",
            kind="lstm",
            description="bidirectional LSTM identifying one of 9 speakers from a variable-length "
            "sequence of 12 LPC cepstrum coefficients",
            load=data.load_japanese_vowels,
            defaults=TrainConfig(
                epochs=150,
                batch_size=16,
                lr=1e-3,
                weight_decay=1e-3,
                dropout=0.3,
                patience=20,
                val_fraction=0.2,
                hidden=32,
            ),
            build=_build_lstm,
            input=TensorSpec(
                name="sequences",
                datatype="FP32",
                shape=[-1, -1, 12],
                description="raw coefficient sequences [batch, time, 12]; one length per batch",
            ),
            quick_sizes=(90, 270),
        ),
    )
}
