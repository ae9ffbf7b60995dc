"""Model quality in production: live accuracy from feedback and input drift against the
training distribution, per model version. Fed off the request path (the prediction-log
writer thread and the feedback route); read by the metrics collector at scrape time."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from modelrepo import ModelCard
from predictionlog import Prediction

PSI_EPSILON = 1e-4  # keeps empty bins from making PSI infinite


class Drift:
    """Population stability index of each feature's recent values against the training
    deciles saved in model.json (``baseline``). Sequence inputs count every time step.

    The window is a ring of the last ``window`` rows' bin indices; counts are updated with one
    ``bincount`` per batch of rows, never row by row."""

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


class Quality:
    """Per-version live accuracy (sliding window of feedback) and drift trackers."""

    def __init__(self, accuracy_window: int = 500, drift_window: int = 2000) -> None:
        self.accuracy_window = accuracy_window
        self.drift_window = drift_window
        self.outcomes: dict[tuple[str, int], deque[bool]] = {}
        self.drift: dict[tuple[str, int], Drift] = {}
        self.feedback_counts: dict[tuple[str, int, str], int] = {}
        self.lock = threading.Lock()

    def track(self, card: ModelCard) -> None:
        if card.baseline and card.inputs[0].shape[-1] == len(card.baseline):
            self.drift[(card.name, card.version)] = Drift(card, self.drift_window)

    def forget(self, card: ModelCard) -> None:
        """A retired version: its drift and accuracy series end with it."""
        key = (card.name, card.version)
        self.drift.pop(key, None)
        with self.lock:
            self.outcomes.pop(key, None)
            for outcome in ("correct", "incorrect"):
                self.feedback_counts.pop((*key, outcome), None)

    def observed(self, rows: Sequence[Prediction]) -> None:
        """Predictions just written to the log (called by its writer thread)."""
        groups: dict[tuple[str, int], list[np.ndarray]] = {}
        for row in rows:
            groups.setdefault((row.model, row.version), []).append(row.inputs)
        for key, inputs in groups.items():
            drift = self.drift.get(key)
            if drift is not None:
                drift.add(np.concatenate([x.reshape(-1, len(drift.names)) for x in inputs]))

    def feedback(self, model: str, version: int, correct: bool) -> None:
        with self.lock:
            window = self.outcomes.setdefault((model, version), deque(maxlen=self.accuracy_window))
            window.append(correct)
            key = (model, version, "correct" if correct else "incorrect")
            self.feedback_counts[key] = self.feedback_counts.get(key, 0) + 1

    def accuracy(self) -> list[tuple[str, int, float, int]]:
        """(model, version, accuracy over the window, window size)."""
        with self.lock:
            return [(m, v, sum(w) / len(w), len(w)) for (m, v), w in self.outcomes.items() if w]
