"""The versions committed under models/ are sound, and their recorded figures are true."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelrepo import MODEL_FILE, file_sha256, read_card, scan
from tests.support.onnx_helpers import predict_classes, reference_max_error, session
from tests.support.paths import MODELS, require_fashion_mnist

TARGETS = {"breast-cancer-ann": 0.96, "fashion-cnn": 0.915, "vowels-lstm": 0.96}


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

    if name == "fashion-cnn":
        require_fashion_mnist()
    loader = {
        "breast-cancer-ann": data.load_breast_cancer,
        "fashion-cnn": data.load_fashion_mnist,
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
