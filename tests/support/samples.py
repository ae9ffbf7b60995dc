"""Deterministic raw inputs for the three committed models (valid ranges, natural shapes)."""

from __future__ import annotations

import numpy as np

from modelrepo import read_card
from tests.support.onnx_helpers import session
from tests.support.paths import MODELS


def rows(n: int = 3, seed: int = 0) -> np.ndarray:
    """breast-cancer-ann rows: the reference rows from model.json, tiled."""
    card = read_card(MODELS / "breast-cancer-ann" / "1")
    tensor = card.reference[0].inputs[0]
    base = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
    return np.resize(base, (n, base.shape[1])).astype(np.float32)


def images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28)).astype(np.float32)


def sequences(lengths: tuple[int, ...] = (7, 15, 7), seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 1, size=(t, 12)).astype(np.float32) for t in lengths]


INPUTS = {"breast-cancer-ann": "features", "fashion-cnn": "images", "vowels-lstm": "sequences"}


def batch_for(name: str) -> np.ndarray:
    if name == "breast-cancer-ann":
        return rows(4)
    if name == "fashion-cnn":
        return images(3)
    return np.stack(sequences((11, 11)))


def direct(name: str, batch: np.ndarray) -> np.ndarray:
    sess = session(MODELS / name / "1" / "model.onnx")
    return sess.run(["probabilities"], {INPUTS[name]: batch})[0]
