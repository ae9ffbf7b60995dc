"""The versions committed under models/ are sound, and their recorded figures are true."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelrepo import MODEL_FILE, file_sha256, read_card, scan
from tests.support.onnx_helpers import predict_classes, reference_max_error, session
from tests.support.paths import MODELS, require_fashion_mnist

TARGETS = {
    "breast-cancer-ann": 0.96,
    "fashion-cnn": 0.915,
    "fashion-cnn-int8": 0.915,  # its source's target: the gate allows 0.5 point below it
    "vowels-lstm": 0.96,
}


def newest(name: str) -> Path:
    return MODELS / name / str(scan(MODELS)[name][-1])


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_committed_version_loads_and_self_checks(name: str) -> None:
    folder = newest(name)
    card = read_card(folder)
    assert card.onnx_sha256 == file_sha256(folder / MODEL_FILE)
    sess = session(folder / MODEL_FILE)
    assert [i.name for i in sess.get_inputs()] == [t.name for t in card.inputs]
    assert [o.name for o in sess.get_outputs()] == [t.name for t in card.outputs]
    assert reference_max_error(sess, card) <= card.reference_atol
    assert card.metrics.accuracy >= TARGETS[name]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_recorded_test_accuracy_is_reproduced_from_raw_inputs(name: str) -> None:
    from training import data

    if name.startswith("fashion-cnn"):
        require_fashion_mnist()
    loader = {
        "breast-cancer-ann": data.load_breast_cancer,
        "fashion-cnn": data.load_fashion_mnist,
        "fashion-cnn-int8": data.load_fashion_mnist,
        "vowels-lstm": data.load_japanese_vowels,
    }[name]
    dataset = loader()
    folder = newest(name)
    card = read_card(folder)
    assert card.provenance.dataset.fingerprint == dataset.fingerprint()
    predicted = predict_classes(session(folder / MODEL_FILE), dataset.x_test)
    accuracy = float(np.mean(predicted == dataset.y_test))
    assert len(predicted) == card.metrics.n
    assert accuracy == pytest.approx(card.metrics.accuracy, abs=1e-9)
    assert accuracy >= TARGETS[name]


FORECASTERS = ("co2-gru", "co2-lstm")


@pytest.mark.parametrize("name", FORECASTERS)
def test_committed_forecaster_reproduces_its_recorded_errors_from_the_raw_series(
    name: str,
) -> None:
    """The exported graph, run on the raw co2 windows of the test part, gives the card's
    MAE, RMSE and MASE per step; the baselines recomputed give theirs."""
    from training import forecast, series

    folder = newest(name)
    card = read_card(folder)
    sess = session(folder / MODEL_FILE)
    assert reference_max_error(sess, card) <= card.reference_atol
    assert card.parity is not None and card.parity.max_abs_diff <= 1e-4
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # a dynamic batch axis
    data = series.load_co2()
    assert card.provenance.dataset is not None
    assert card.provenance.dataset.fingerprint == data.fingerprint()
    w = forecast.make_windows(data, forecast.FORECASTERS[name], quick=False, seed=0)
    served = sess.run(["predictions"], {"window": w.x_test})[0]
    errors, _ = forecast.test_errors(data, w, served)
    assert card.forecast is not None and card.forecast.origins == len(w.x_test) == 331
    for got, recorded in zip(errors, card.forecast.errors, strict=True):
        assert got.method == recorded.method
        assert got.mase == pytest.approx(recorded.mase, rel=1e-9)
        for g, r in zip(got.per_step, recorded.per_step, strict=True):
            assert (g.mae, g.rmse, g.mase) == pytest.approx((r.mae, r.rmse, r.mase), rel=1e-9)
    model, naive, holt_winters = card.forecast.errors
    assert model.mase < 1 and model.mase < naive.mase  # beats seasonal naive
    assert model.mase <= holt_winters.mase  # at or below the statistical baseline
