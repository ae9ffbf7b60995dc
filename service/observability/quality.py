"""Model quality in production, per model version: live accuracy over the last feedback
labels, read from the prediction log's store at scrape time (so every worker process and
every replica sharing the store reports the same figure), and input drift (computed by the
prediction-log writer over the rows it writes, read from its figures at scrape time)."""

from __future__ import annotations

from modelrepo import ModelCard
from predictionlog import Store


class Quality:
    """Which versions serve (only theirs are exported: a retired version's series end with
    it), and their live accuracy from the store."""

    def __init__(self, accuracy_window: int = 500, store: Store | None = None) -> None:
        self.accuracy_window = accuracy_window
        self.store = store
        self.serving: set[tuple[str, int]] = set()

    def track(self, card: ModelCard) -> None:
        self.serving.add((card.name, card.version))

    def forget(self, card: ModelCard) -> None:
        self.serving.discard((card.name, card.version))

    def accuracy(self) -> list[tuple[str, int, float, int]]:
        """(model, version, accuracy over the window, labels in the window) of each serving
        version with feedback."""
        if self.store is None:
            return []
        figures = []
        for model, version in sorted(self.serving):
            right, labelled = self.store.recent_outcomes(model, version, self.accuracy_window)
            if labelled:
                figures.append((model, version, right / labelled, labelled))
        return figures
