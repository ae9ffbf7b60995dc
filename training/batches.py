"""Turning raw numpy samples into torch mini-batches, one collate function per input kind."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

Inputs = tuple[torch.Tensor, ...]


def collate(x: np.ndarray | list[np.ndarray], index: np.ndarray) -> Inputs:
    """``(tensor,)`` for fixed-shape samples; ``(padded, lengths)`` for variable-length ones."""
    if not isinstance(x, list):
        return (torch.from_numpy(np.ascontiguousarray(x[index], dtype=np.float32)),)
    sequences = [x[i] for i in index]
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    padded = np.zeros((len(sequences), lengths.max(), sequences[0].shape[1]), dtype=np.float32)
    for row, seq in enumerate(sequences):
        padded[row, : len(seq)] = seq
    return torch.from_numpy(padded), torch.from_numpy(lengths)


def minibatches(n: int, batch_size: int, rng: np.random.Generator | None) -> Iterator[np.ndarray]:
    """Index batches over ``range(n)``, shuffled when ``rng`` is given."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def flip_half(inputs: Inputs, generator: torch.Generator) -> Inputs:
    """Augmentation for images ``[B, H, W]``: mirror a random half left-right."""
    (images,) = inputs
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return (torch.where(flip[:, None, None], images.flip(-1), images),)
