"""A recipe of your own, in one file: ``python -m training --recipe-file examples/wine_recipe.py
wine-mlp [--quick]`` trains it, exports it, checks it and publishes it like the built-in ones.

A recipe is data (a loader returning the official train/test split as raw arrays), a network
(built from the training inputs, so that normalization fitted on them travels inside the
exported graph), the graph's input, and default settings; everything else (validation split,
early stopping, plots, ONNX export, parity, card, atomic publish) is the shared pipeline.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_wine
from torch import nn

from modelrepo import TensorSpec
from training.config import TrainConfig
from training.data import Dataset, from_sklearn
from training.nets import MLP, Normalize
from training.recipes import Recipe, Samples


def load() -> Dataset:
    """scikit-learn's bundled wine data (178 samples, 13 features, 3 cultivars), with a fixed
    stratified 75/25 split since the set has no official one."""
    return from_sklearn(
        load_wine(), "sklearn-wine", "sklearn.datasets.load_wine (UCI Wine, bundled)", 0
    )


def build(x: Samples, n_classes: int, config: TrainConfig) -> nn.Module:
    assert isinstance(x, np.ndarray)
    t = torch.from_numpy(x)
    norm = Normalize(t.mean(0), t.std(0))  # fitted on the training part, exported with it
    return MLP(norm, x.shape[1], (config.hidden, config.hidden // 2), n_classes, config.dropout)


RECIPE = Recipe(
    name="wine-mlp",
    kind="custom",
    description="MLP telling three wine cultivars apart from 13 chemical measurements",
    load=load,
    defaults=TrainConfig(epochs=150, batch_size=16, lr=2e-3, patience=15, hidden=32),
    build=build,
    input=TensorSpec(name="features", datatype="FP32", shape=[-1, 13]),
    quick_sizes=(100, 45),
)
