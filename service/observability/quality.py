"""Model quality in production, per model version: live accuracy from feedback (kept here)
and input drift (computed by the prediction-log writer over the rows it writes, and read
from its figures at scrape time). Fed by the feedback path; read by the metrics collector."""

from __future__ import annotations

import threading
from collections import deque

from modelrepo import ModelCard


class Quality:
    """Per-version live accuracy (sliding window of feedback), and which versions serve."""

    def __init__(self, accuracy_window: int = 500) -> None:
        self.accuracy_window = accuracy_window
        self.outcomes: dict[tuple[str, int], deque[bool]] = {}
        self.feedback_counts: dict[tuple[str, int, str], int] = {}
        #: Versions serving now: their series are exported, a retired version's end with it.
        self.serving: set[tuple[str, int]] = set()
        self.lock = threading.Lock()

    def track(self, card: ModelCard) -> None:
        self.serving.add((card.name, card.version))

    def forget(self, card: ModelCard) -> None:
        """A retired version: its drift and accuracy series end with it."""
        key = (card.name, card.version)
        self.serving.discard(key)
        with self.lock:
            self.outcomes.pop(key, None)
            for outcome in ("correct", "incorrect"):
                self.feedback_counts.pop((*key, outcome), None)

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
