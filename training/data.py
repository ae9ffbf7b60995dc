"""The three datasets of DESIGN §1, loaded from what packages ship (never downloaded).

Each loader returns the official train/test split as raw values; validation is carved out of
the training split by :func:`split_validation`. Normalization is *not* done here: it is fitted
on the training split and baked into the exported graph (see ``nets.Normalize``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from training.errors import DatasetUnavailable

#: Where Debian's dataset-fashion-mnist puts the IDX files (override: NNSERVE_FASHION_MNIST_DIR).
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass
class Dataset:
    """Raw arrays of one dataset's official split.

    ``x_*`` is an array ``[n, ...]`` or, for variable-length sequences, a list of ``[T_i, C]``
    arrays.
    """

    name: str
    source: str
    split: str
    labels: list[str]
    x_train: np.ndarray | list[np.ndarray]
    y_train: np.ndarray
    x_test: np.ndarray | list[np.ndarray]
    y_test: np.ndarray
    feature_names: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for part in (self.x_train, self.y_train, self.x_test, self.y_test):
            for array in part if isinstance(part, list) else [part]:
                digest.update(str(array.shape).encode())
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()


def take(x: np.ndarray | list[np.ndarray], index: np.ndarray) -> np.ndarray | list[np.ndarray]:
    return [x[i] for i in index] if isinstance(x, list) else x[index]


def split_validation(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) index arrays over the official training split."""
    index = np.arange(len(y))
    train_idx, val_idx = train_test_split(index, test_size=fraction, random_state=seed, stratify=y)
    return np.sort(train_idx), np.sort(val_idx)


def subsample(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A stratified subset of ``n`` indices (``--quick`` runs), or all of them."""
    if n >= len(y):
        return np.arange(len(y))
    idx, _ = train_test_split(np.arange(len(y)), train_size=n, random_state=seed, stratify=y)
    return np.sort(idx)


def load_breast_cancer() -> Dataset:
    """Wisconsin diagnostic breast cancer (569 x 30), bundled with scikit-learn.

    It has no official split, so one fixed stratified 75/25 split (``random_state=42``, the
    usual convention) serves as the official one, the same for every run and every consumer.
    """
    from sklearn.datasets import load_breast_cancer as load

    return from_sklearn(
        load(), "breast-cancer-wisconsin-diagnostic", "sklearn.datasets.load_breast_cancer", 42
    )


def from_sklearn(bunch: Any, name: str, source: str, seed: int) -> Dataset:
    """A scikit-learn bundled set (``data``, ``target``, names) with no official split: one
    fixed stratified 75/25 split (``random_state=seed``) serves as the official one."""
    x = bunch.data.astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=seed, stratify=y
    )
    return Dataset(
        name=name,
        source=source,
        split=f"fixed stratified 75/25 split, random_state={seed} (the dataset has no "
        "official split)",
        labels=[str(n) for n in bunch.target_names],
        feature_names=[str(n) for n in bunch.feature_names],
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
    )


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DatasetUnavailable(
            f"cannot read {path} ({exc}); install Debian's dataset-fashion-mnist package"
        ) from exc
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08 or data.size != int(np.prod(dims)):
        raise DatasetUnavailable(f"{path} is not a valid IDX ubyte file")
    return data.reshape(dims)


def load_fashion_mnist() -> Dataset:
    """Fashion-MNIST, official 60k/10k split, from Debian's ``dataset-fashion-mnist``."""
    folder = Path(os.environ.get("NNSERVE_FASHION_MNIST_DIR", FASHION_DIR))
    if not folder.is_dir():
        raise DatasetUnavailable(
            f"{folder} not found; install Debian's dataset-fashion-mnist package "
            "(apt-get install dataset-fashion-mnist)"
        )

    def read(stem: str) -> np.ndarray:
        return _read_idx(folder / f"{stem}-ubyte.gz")

    return Dataset(
        name="fashion-mnist",
        source=f"Debian package dataset-fashion-mnist ({folder})",
        split="official 60,000 train / 10,000 test",
        labels=FASHION_LABELS,
        x_train=read("train-images-idx3"),
        y_train=read("train-labels-idx1").astype(np.int64),
        x_test=read("t10k-images-idx3"),
        y_test=read("t10k-labels-idx1").astype(np.int64),
    )


def load_japanese_vowels() -> Dataset:
    """UEA JapaneseVowels (official 270 train / 370 test, 12 LPC channels, 7-29 steps).

    Shipped inside the sktime package; every sequence keeps its own length.
    """
    try:
        from sktime.datasets import load_japanese_vowels as load
    except ImportError as exc:
        raise DatasetUnavailable("sktime is not installed (pip install -e '.[train]')") from exc

    def read(split: str) -> tuple[list[np.ndarray], np.ndarray]:
        frame, y = load(split=split, return_X_y=True)
        sequences = [
            np.stack(
                [np.asarray(frame.iloc[i, c], dtype=np.float32) for c in range(frame.shape[1])],
                axis=1,
            )
            for i in range(len(frame))
        ]
        return sequences, np.asarray([int(v) - 1 for v in y], dtype=np.int64)

    x_train, y_train = read("train")
    x_test, y_test = read("test")
    return Dataset(
        name="uea-japanese-vowels",
        source="sktime.datasets.load_japanese_vowels",
        split="official UEA 270 train / 370 test",
        labels=[f"speaker-{i}" for i in range(1, 10)],
        feature_names=[f"lpc-{i}" for i in range(1, 13)],
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
    )
