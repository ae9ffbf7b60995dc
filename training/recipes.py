"""The three models of DESIGN §1: their data, network, default settings and graph I/O; and
recipes of your own, one file each, loaded with ``python -m training --recipe-file FILE``
(a module defining ``RECIPE = Recipe(...)``; ``examples/wine_recipe.py`` is a complete one)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from modelrepo import TensorSpec, is_valid_name
from training import data
from training.batches import flip_half
from training.config import TrainConfig
from training.errors import ConfigError
from training.loop import Augment
from training.nets import CNN, MLP, Normalize, SequenceLSTM

Samples = np.ndarray | list[np.ndarray]


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: Literal["ann", "cnn", "lstm", "custom"]
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
        cell=config.cell,
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


def load_recipe_file(path: Path) -> Recipe:
    """The ``RECIPE`` a file defines, registered in :data:`RECIPES` under its name."""
    spec = importlib.util.spec_from_file_location(f"nnserve_recipe_{path.stem}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ConfigError(f"recipe file {path} not found (or not a .py file)")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"recipe file {path} fails to load: {exc}") from exc
    recipe = getattr(module, "RECIPE", None)
    if not isinstance(recipe, Recipe):
        raise ConfigError(f"recipe file {path} defines no RECIPE = training.recipes.Recipe(...)")
    if recipe.name in RECIPES and RECIPES[recipe.name] is not recipe:
        raise ConfigError(f"recipe file {path}: {recipe.name!r} is already a recipe")
    if not is_valid_name(recipe.name):
        raise ConfigError(f"recipe file {path}: invalid model name {recipe.name!r}")
    RECIPES[recipe.name] = recipe
    return recipe
