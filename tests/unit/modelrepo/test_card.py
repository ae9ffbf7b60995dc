"""model.json: one pydantic schema, written by training and read by the service."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from modelrepo import ModelCard, Tensor, read_card, scan
from tests.support.paths import MODELS


def committed_cards() -> list[ModelCard]:
    return [read_card(MODELS / name / str(versions[-1])) for name, versions in scan(MODELS).items()]


def test_every_committed_card_round_trips() -> None:
    cards = committed_cards()
    assert {c.name for c in cards} == {
        "breast-cancer-ann",
        "fashion-cnn",
        "fashion-cnn-int8",
        "vowels-lstm",
        "co2-gru",
        "co2-lstm",
    }
    for card in cards:
        again = ModelCard.model_validate_json(card.to_json())
        assert again == card
        assert json.loads(again.to_json()) == json.loads(card.to_json())


def test_card_holds_the_contracted_fields() -> None:
    for card in committed_cards():
        assert card.kind in {"ann", "cnn", "lstm", "gru"}
        if card.forecast is not None:  # a forecaster: regression, its figures in ``forecast``
            f = card.forecast
            assert card.task == "regression" and not card.labels and card.metrics is None
            assert card.inputs[0].shape == [-1, f.window]
            assert card.outputs[0].shape == [-1, f.horizon] and card.outputs[0].datatype == "FP32"
            assert card.parity.max_abs_diff <= 1e-4 and card.parity.n_samples >= 256
            assert [e.method for e in f.errors] == ["model", "seasonal-naive", "holt-winters"]
            assert card.provenance.dataset.fingerprint and card.reference
            continue
        assert card.task == "classification"
        assert card.labels and card.metrics.n > 0
        assert len(card.metrics.per_class) == len(card.labels)
        assert card.provenance.dataset.fingerprint
        assert card.provenance.torch_version.startswith("2.13.0")
        if card.quantization is None:
            assert card.parity.max_abs_diff <= 1e-4 and card.parity.n_samples >= 256
        else:  # no PyTorch original: parity is against the float source (its card's figures)
            q = card.quantization
            assert card.parity is None and card.provenance.origin == "quantized"
            assert q.source_accuracy - q.accuracy <= q.max_accuracy_drop
            assert q.accuracy == card.metrics.accuracy and q.parity_samples >= 256
        assert card.outputs[-1].shape == [-1, len(card.labels)]
        assert card.inputs[0].shape[0] == -1  # dynamic batch axis
        assert card.reference


def test_invalid_cards_are_refused() -> None:
    card = committed_cards()[0]
    data = json.loads(card.to_json())
    for field, bad in [
        ("name", "Bad_Name"),
        ("version", 0),
        ("kind", "rnn"),
        ("onnx_sha256", "xyz"),
        ("labels", []),
    ]:
        broken = {**data, field: bad}
        with pytest.raises(ValidationError):
            ModelCard.model_validate(broken)
    with pytest.raises(ValidationError, match=r"unknown|extra"):
        ModelCard.model_validate({**data, "surprise": 1})


def test_tensor_data_must_match_its_shape() -> None:
    Tensor(name="x", datatype="FP32", shape=[2, 3], data=[0.0] * 6)
    with pytest.raises(ValidationError, match="needs 6 values, got 5"):
        Tensor(name="x", datatype="FP32", shape=[2, 3], data=[0.0] * 5)


def test_the_explain_baseline_is_optional_and_checked() -> None:
    card = committed_cards()[0]
    assert card.explain_baseline is None  # written before the field existed: still valid
    data = json.loads(card.to_json())
    good = {"description": "element-wise mean", "shape": [30], "data": [0.5] * 30}
    assert ModelCard.model_validate({**data, "explain_baseline": good}).explain_baseline
    with pytest.raises(ValidationError, match="needs 30 values"):
        ModelCard.model_validate({**data, "explain_baseline": {**good, "data": [0.5] * 29}})
