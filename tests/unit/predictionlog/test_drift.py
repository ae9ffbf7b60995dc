"""Input drift (PSI) bookkeeping in the log writer, checked against plain recomputation."""

from __future__ import annotations

import numpy as np

from modelrepo import read_card
from predictionlog.drift import PSI_EPSILON, Drift, Drifts
from tests.support.paths import MODELS


def naive_psi(card_baseline: list, rows: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
    values = []
    for f, base in enumerate(card_baseline):
        counts = np.bincount(
            np.searchsorted(base.bin_edges, rows[:, f], side="right"), minlength=len(base.fractions)
        )
        actual = np.clip(counts / counts.sum(), PSI_EPSILON, None)
        expected = np.clip(np.asarray(base.fractions), PSI_EPSILON, None)
        values.append(float(((actual - expected) * np.log(actual / expected)).sum()))
    return np.asarray(values)


def test_drift_window_matches_a_recomputation_and_detects_a_shift() -> None:
    from training.data import load_breast_cancer

    card = read_card(MODELS / "breast-cancer-ann" / "1")
    drift = Drift(card, window=100)
    x = load_breast_cancer().x_train
    for start in range(0, 250, 37):  # batches that wrap the ring several times
        drift.add(x[start : start + 37])
    window = x[:259][-100:]
    got = np.asarray([v for _, v in drift.psi()])
    np.testing.assert_allclose(got, naive_psi(card.baseline, window), rtol=1e-9, atol=1e-12)
    assert drift.counts.sum(axis=1).tolist() == [100] * 30
    assert got.max() < 0.5  # training rows look like the training split

    shifted = Drift(card, window=100)
    shifted.add(x[:100] * 3.0)
    assert min(v for _, v in shifted.psi()) > 0.25


def test_sequences_count_every_time_step() -> None:
    card = read_card(MODELS / "vowels-lstm" / "1")
    drift = Drift(card, window=50)
    drift.add(np.zeros((20, 12), dtype=np.float32))
    drift.add(np.zeros((40, 12), dtype=np.float32))
    assert drift.counts.sum(axis=1).tolist() == [50] * 12


def test_binning_all_features_at_once_matches_searchsorted_per_feature() -> None:
    """co2-lstm's 104 features: values on the edges, beyond both ends, infinite and NaN get
    the bins that ``searchsorted(side="right")`` gives them, feature by feature."""
    card = read_card(MODELS / "co2-lstm" / "1")
    rng = np.random.default_rng(0)
    rows = rng.normal(330, 30, size=(300, 104)).astype(np.float32)
    edges = [np.asarray(base.bin_edges) for base in card.baseline]
    for f, e in enumerate(edges):
        rows[f, f] = np.float32(e[f % len(e)])  # exactly on an edge (as float32 holds it)
        rows[104 + f, f] = [-np.inf, np.inf, np.nan, e[0] - 1e6, e[-1] + 1e6][f % 5]
    drift = Drift(card, window=300)
    drift.add(rows)
    expected = np.stack(
        [np.searchsorted(e, rows[:, f], side="right") for f, e in enumerate(edges)], axis=1
    )
    np.testing.assert_array_equal(drift.ring, expected)
    assert np.isnan(rows).sum() == 104 // 5 + 1  # NaN really was among the values
    assert drift.counts.sum() == 300 * 104


def test_a_feature_with_fewer_edges_adds_nothing_from_the_bins_it_lacks() -> None:
    """Deciles of a feature with ties have fewer edges: its PSI is that of its own bins."""
    card = read_card(MODELS / "breast-cancer-ann" / "1")
    first = card.baseline[0]
    short = first.model_copy(update={"bin_edges": first.bin_edges[::2], "fractions": [0.2] * 5})
    ragged = card.model_copy(update={"baseline": [short, *card.baseline[1:]]})
    rows = np.random.default_rng(2).normal(size=(80, 30)).astype(np.float32) * 5 + 10
    drift = Drift(ragged, window=80)
    drift.add(rows)
    got = dict(drift.psi())
    np.testing.assert_allclose(got[short.name], naive_psi([short], rows[:, :1])[0], rtol=1e-12)
    assert drift.counts[0, 6:].sum() == 0


def test_an_update_bins_only_the_rows_that_stay_in_the_window() -> None:
    """Rows committed since the last update beyond the newest ``window`` are let go unbinned,
    and the window is the same as if every row had been binned; rows whose write failed
    count for nothing; a version without a baseline keeps nothing."""
    card = read_card(MODELS / "vowels-lstm" / "1")
    rng = np.random.default_rng(1)
    drifts = Drifts(MODELS, window=50)
    reference = Drift(card, window=50)
    for length in (3, 11, 7, 20, 9, 15, 4):  # sequences: every time step counts
        batch = rng.normal(size=(2, length, 12)).astype(np.float32)
        drifts.observe("vowels-lstm", 1, batch)
        drifts.written(True)
        reference.add(batch)
    drifts.observe("vowels-lstm", 1, np.full((1, 30, 12), 99, dtype=np.float32))
    drifts.written(False)  # not written: not counted
    drifts.observe("fashion-cnn", 1, np.zeros((5, 28, 28), dtype=np.float32))
    drifts.written(True)
    held = drifts.committed[("vowels-lstm", 1)]
    # the oldest batches went; what is left covers the window with less than a batch over
    assert 50 <= sum(x.size // 12 for x in held) < 50 + 2 * 20
    assert len(held) < 7

    binned: list[int] = []
    drifts.update(lambda: binned.append(1), chunk=128)
    tracker = drifts.trackers[("vowels-lstm", 1)]
    assert tracker is not None
    np.testing.assert_array_equal(tracker.counts, reference.counts)
    assert tracker.counts.sum(axis=1).tolist() == [50] * 12
    assert drifts.trackers[("fashion-cnn", 1)] is None  # no baseline for images
    drifts.observe("fashion-cnn", 1, np.zeros((5, 28, 28), dtype=np.float32))
    drifts.written(True)
    assert ("fashion-cnn", 1) not in drifts.committed
