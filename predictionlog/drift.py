"""Input drift: the population stability index of each feature's recent values against the
training deciles saved in ``model.json`` (``baseline``). Computed by the log writer over the
rows it writes, so it costs the request path nothing."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

from modelrepo import ModelCard

PSI_EPSILON = 1e-4  # keeps empty bins from making PSI infinite


class Drift:
    """Population stability index of each feature's recent values against the training
    deciles saved in model.json (``baseline``). Sequence inputs count every time step.

    The window is a ring of the last ``window`` rows' bin indices; counts are updated with one
    ``bincount`` per batch of rows, never row by row."""

    @staticmethod
    def applies(card: ModelCard) -> bool:
        """The card has a baseline for each feature of its input's last axis."""
        return bool(card.baseline) and card.inputs[0].shape[-1] == len(card.baseline)

    def __init__(self, card: ModelCard, window: int) -> None:
        self.names = [b.name for b in card.baseline]
        self.edges = [np.asarray(b.bin_edges) for b in card.baseline]
        self.expected = np.asarray([b.fractions for b in card.baseline])
        self.n_bins = self.expected.shape[1]
        self.counts = np.zeros(self.expected.shape, dtype=np.int64)
        self.ring = np.zeros((window, len(self.names)), dtype=np.int64)
        self.size = 0  # rows in the window
        self.next = 0  # ring position of the next row
        self.offsets = np.arange(len(self.names)) * self.n_bins
        self.lock = threading.Lock()

    def _count(self, bins: np.ndarray) -> np.ndarray:
        flat = (bins + self.offsets).ravel()
        counts = np.bincount(flat, minlength=self.counts.size)
        return counts.reshape(self.counts.shape)

    def add(self, inputs: np.ndarray) -> None:
        rows = inputs.reshape(-1, len(self.names))[-len(self.ring) :]
        bins = np.stack(
            [
                np.searchsorted(edges, rows[:, f], side="right")
                for f, edges in enumerate(self.edges)
            ],
            axis=1,
        )
        n = len(bins)
        with self.lock:
            slots = (self.next + np.arange(n)) % len(self.ring)
            evicted = n - (len(self.ring) - self.size)
            if evicted > 0:  # the rows these slots held leave the window
                self.counts -= self._count(self.ring[slots[n - evicted :]])
            self.ring[slots] = bins
            self.counts += self._count(bins)
            self.size = min(len(self.ring), self.size + n)
            self.next = int((self.next + n) % len(self.ring))

    def psi(self) -> Iterator[tuple[str, float]]:
        with self.lock:
            total = self.counts.sum(axis=1, keepdims=True)
            if not total.any():
                return
            actual = np.clip(self.counts / np.maximum(total, 1), PSI_EPSILON, None)
        expected = np.clip(self.expected, PSI_EPSILON, None)
        values = ((actual - expected) * np.log(actual / expected)).sum(axis=1)
        yield from zip(self.names, values.tolist(), strict=True)
