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
    deciles saved in model.json (``baseline``). Sequence inputs count every time step."""

    def __init__(self, card: ModelCard, window: int) -> None:
        self.names = [b.name for b in card.baseline]
        self.edges = [np.asarray(b.bin_edges) for b in card.baseline]
        self.expected = np.asarray([b.fractions for b in card.baseline])
        self.counts = np.zeros_like(self.expected)
        self.recent: deque[np.ndarray] = deque()
        self.window = window
        self.lock = threading.Lock()

    def add(self, inputs: np.ndarray) -> None:
        rows = inputs.reshape(-1, len(self.names))
        bins = np.stack(
            [
                np.searchsorted(edges, rows[:, f], side="right")
                for f, edges in enumerate(self.edges)
            ],
            axis=1,
        )
        with self.lock:
            for row in bins:
                self.counts[np.arange(len(self.names)), row] += 1
                self.recent.append(row)
                if len(self.recent) > self.window:
                    old = self.recent.popleft()
                    self.counts[np.arange(len(self.names)), old] -= 1

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

    def observed(self, rows: Sequence[Prediction]) -> None:
        """Predictions just written to the log (called by its writer thread)."""
        for row in rows:
            drift = self.drift.get((row.model, row.version))
            if drift is not None:
                drift.add(row.inputs)

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
