"""Input drift: the population stability index of each feature's recent values against the
training deciles saved in ``model.json`` (``baseline``). Computed by the log writer over the
rows it writes, so it costs the request path nothing."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from modelrepo import ModelCard, read_card

log = logging.getLogger("nnserve.predictionlog.drift")

PSI_EPSILON = 1e-4  # keeps empty bins from making PSI infinite
#: A version that is not among its model's ``KEEP_NEWEST`` newest and has sent no rows for
#: ``IDLE_S`` seconds loses its tracker (a retired version's window would otherwise be kept
#: for good: every version published since the writer started, 0.2-0.5 MB each).
KEEP_NEWEST = 2
IDLE_S = 60.0


class Drift:
    """Population stability index of each feature's recent values against the training
    deciles saved in model.json (``baseline``). Sequence inputs count every time step.

    The window is a ring of the last ``window`` rows' bin indices; counts are updated with one
    ``bincount`` per batch of rows, never row by row. Binning compares the rows with one edge
    of every feature at a time (a bin is the number of edges at or below a value, as
    ``searchsorted(side="right")`` counts it), not one ``searchsorted`` call per feature:
    2,000 rows of co2-lstm's 104 features in chunks of 128 take 2.7 ms instead of 10.0
    (breast-cancer-ann's 30: 1.2 instead of 3.3), the writer's CPU every ``DRIFT_EVERY``."""

    @staticmethod
    def applies(card: ModelCard) -> bool:
        """The card has a baseline for each feature of its input's last axis."""
        return bool(card.baseline) and card.inputs[0].shape[-1] == len(card.baseline)

    def __init__(self, card: ModelCard, window: int) -> None:
        self.names = [b.name for b in card.baseline]
        edges = [b.bin_edges for b in card.baseline]
        #: [features, edges]; a feature with fewer edges is padded with NaN (no value is at
        #: or above NaN), and a NaN value falls past its feature's last edge (as it sorts)
        self.edges = np.full((len(edges), max(map(len, edges), default=0)), np.nan)
        for f, feature in enumerate(edges):
            self.edges[f, : len(feature)] = feature
        if self.edges.shape[1] > 255:  # bins are counted in uint8
            raise ValueError(f"{card.name}: over 255 drift bin edges ({self.edges.shape[1]})")
        self.past_last = np.asarray([len(feature) for feature in edges], dtype=np.uint8)
        #: [features, bins]; a feature with fewer bins has 0 in the rest (its counts stay 0
        #: there: both clip to PSI_EPSILON and add nothing to its PSI)
        self.expected = np.zeros((len(edges), self.edges.shape[1] + 1))
        for f, base in enumerate(card.baseline):
            self.expected[f, : len(base.fractions)] = base.fractions
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
        rows = inputs.reshape(-1, len(self.names))[-len(self.ring) :].astype(np.float64)
        bins = np.zeros(rows.shape, dtype=np.uint8)  # at most 255 edges: deciles have 9
        at_or_above = np.empty(rows.shape, dtype=bool)
        for edge in self.edges.T:  # one edge of every feature
            bins += np.greater_equal(rows, edge, out=at_or_above)
        unknown = np.isnan(rows)
        if unknown.any():
            bins[unknown] = np.broadcast_to(self.past_last, rows.shape)[unknown]
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


def _steps(inputs: np.ndarray) -> int:
    """What a drift window counts in ``inputs``: rows, or every time step of sequences."""
    return inputs.size // inputs.shape[-1] if inputs.ndim > 1 and inputs.shape[-1] else len(inputs)


class Drifts:
    """The writer's drift bookkeeping: the inputs of the rows pending and of those committed
    since the last update, and one :class:`Drift` per model version whose card has a
    baseline (read from the repository the first time the version is seen)."""

    def __init__(self, repository: Path | None, window: int) -> None:
        self.repository = repository
        self.window = window
        self.pending: dict[tuple[str, int], list[np.ndarray]] = {}
        #: inputs committed since the last update (the newest ``window`` steps, or a few more)
        self.committed: dict[tuple[str, int], deque[np.ndarray]] = {}
        self.steps: dict[tuple[str, int], int] = {}  # the steps (rows, time steps) in those
        self.trackers: dict[tuple[str, int], Drift | None] = {}
        self.last_seen: dict[tuple[str, int], float] = {}  # monotonic time of its last rows

    def observe(self, model: str, version: int, inputs: np.ndarray) -> None:
        self.pending.setdefault((model, version), []).append(inputs)
        self.last_seen[(model, version)] = time.monotonic()

    def written(self, ok: bool) -> None:
        """The pending rows were committed (or not: then they do not count either). Of the
        rows committed since the last update only the newest ``window`` can still be in the
        window after it, so older ones are let go here, never binned: the figures are the
        same as if every row had been, for a fraction of the work (breast-cancer-ann at
        9,000 rows a second: 2,000 rows binned per update instead of 18,000)."""
        if ok:
            for key, inputs in self.pending.items():
                if self.trackers.get(key, True) is None:
                    continue  # a version without a baseline: nothing to bin
                kept = self.committed.setdefault(key, deque())
                kept.extend(inputs)
                steps = self.steps.get(key, 0) + sum(_steps(x) for x in inputs)
                while steps - _steps(kept[0]) >= self.window:
                    steps -= _steps(kept.popleft())
                self.steps[key] = steps
        self.pending = {}

    def update(self, pause: Callable[[], object], chunk: int) -> None:
        """Drift over the rows committed since the last update, vectorized per version, in
        chunks of ``chunk`` rows with ``pause()`` between them (on a shared core a request
        never waits for a whole update: 2,000 rows of 30 features take about 1 ms)."""
        committed, self.committed, self.steps = self.committed, {}, {}
        self._forget_idle(time.monotonic())
        for key, inputs in committed.items():
            if key not in self.trackers:
                self.trackers[key] = self._tracker(*key)
            tracker = self.trackers[key]
            if tracker is None:
                continue
            width = len(tracker.names)
            rows = np.concatenate([x.reshape(-1, width) for x in inputs])[-self.window :]
            for start in range(0, len(rows), chunk):
                tracker.add(rows[start : start + chunk])
                pause()

    def _forget_idle(self, now: float) -> None:
        """Drop the trackers of versions retired meanwhile (see :data:`IDLE_S`)."""
        newest: dict[str, list[int]] = {}
        for model, version in self.trackers:
            newest.setdefault(model, []).append(version)
        for model, versions in newest.items():
            for version in sorted(versions)[:-KEEP_NEWEST]:
                key = (model, version)
                if now - self.last_seen.get(key, now) > IDLE_S:
                    del self.trackers[key]
                    self.last_seen.pop(key, None)

    def figures(self) -> list[list[object]]:
        """``[model, version, feature, psi]`` of every tracked version."""
        return [
            [model, version, feature, psi]
            for (model, version), tracker in self.trackers.items()
            if tracker is not None
            for feature, psi in tracker.psi()
        ]

    def _tracker(self, model: str, version: int) -> Drift | None:
        if self.repository is None:
            return None
        try:
            card = read_card(self.repository / model / str(version))
        except (OSError, ValueError) as exc:
            log.warning("no drift baseline for %s/%d: %s", model, version, exc)
            return None
        return Drift(card, self.window) if Drift.applies(card) else None
