"""Where things are: the checkout, the committed models, the Fashion-MNIST files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
FASHION_DIR = Path(os.environ.get("NNSERVE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def require_fashion_mnist() -> None:
    """Skip locally without Debian's dataset-fashion-mnist; in CI its absence is a failure."""
    if (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        return
    message = f"Fashion-MNIST not found under {FASHION_DIR}: apt-get install dataset-fashion-mnist"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
