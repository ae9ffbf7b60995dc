"""`python -m training quantize`: an int8 variant of a published version, behind its accuracy
gate, into a temporary repository; and the committed int8 version's card is true."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from modelrepo import MODEL_FILE, file_sha256, read_card, scan
from service.runtime.model import ServedModel
from tests.support.onnx_helpers import predict_classes, session
from tests.support.paths import MODELS, ROOT
from training.quantize import GateFailed, gate, quantize
from training.recipes import RECIPES

pytestmark = pytest.mark.usefixtures("fashion_mnist")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A repository holding the committed fashion-cnn/1 (the source)."""
    shutil.copytree(MODELS / "fashion-cnn" / "1", tmp_path / "fashion-cnn" / "1")
    return tmp_path


def test_quantize_publishes_a_gated_int8_model_the_service_loads(repository: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "training", "quantize", "fashion-cnn", "--repository",
         str(repository), "--quick", "--calibration-samples", "128", "--speed-seconds", "0.2"],
        cwd=ROOT, text=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert scan(repository) == {"fashion-cnn": [1], "fashion-cnn-int8": [1]}
    folder = repository / "fashion-cnn-int8" / "1"
    card = read_card(folder)
    q = card.quantization
    assert q is not None and q.source == "fashion-cnn/1" and q.calibration_samples == 128
    assert q.source_accuracy - q.accuracy <= q.max_accuracy_drop == 0.005
    assert card.metrics is not None and card.metrics.accuracy == q.accuracy
    assert q.parity_samples == card.metrics.n and 0 < q.max_abs_diff < 0.5
    assert q.top1_agreement > 0.95
    assert {(s.model, s.batch) for s in q.speed} == {
        (m, b) for m in ("fashion-cnn/1", "fashion-cnn-int8") for b in (1, 32)
    }
    # the first conv, over one channel, and the softmax stay float
    assert sorted(q.excluded_nodes) == ["node_Conv_66", "node_softmax"]
    assert card.onnx_sha256 == file_sha256(folder / MODEL_FILE)
    nodes = onnx.load(str(folder / MODEL_FILE)).graph.node
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in nodes}
    (probabilities,) = [n for n in nodes if "probabilities" in n.output]
    assert probabilities.op_type == "Softmax"  # no Q/DQ pair after it: float precision
    # the service loads it and its self-check passes
    model = ServedModel.load(folder)
    assert model.card.provenance.origin == "quantized"
    assert (repository / "fashion-cnn-int8" / "1" / "confusion_matrix.png").stat().st_size > 0


def test_the_gate_publishes_nothing_below_it(repository: Path) -> None:
    with pytest.raises(GateFailed, match="nothing published"):
        # demand 50 points more than the source: no int8 graph passes that
        quantize(RECIPES["fashion-cnn"], repository, quick=True, calibration=64, max_drop=-0.5)
    assert scan(repository) == {"fashion-cnn": [1]}
    assert not (repository / "fashion-cnn-int8").exists()


def test_gate_arithmetic() -> None:
    gate(0.922, 0.917, 0.005)  # exactly half a point: published
    gate(0.922, 0.93, 0.005)  # better: published
    with pytest.raises(GateFailed, match=r"0\.60 points below"):
        gate(0.922, 0.916, 0.005)


def test_the_committed_int8_card_is_true() -> None:
    """fashion-cnn-int8's recorded accuracy is what its graph gives on the raw test split,
    the source's is what fashion-cnn's gives, and the gate held."""
    from training.data import load_fashion_mnist

    dataset = load_fashion_mnist()
    folder = MODELS / "fashion-cnn-int8" / str(scan(MODELS)["fashion-cnn-int8"][-1])
    card = read_card(folder)
    q = card.quantization
    assert q is not None and card.metrics is not None
    source = MODELS / Path(q.source)
    assert read_card(source).onnx_sha256 == q.source_sha256 == file_sha256(source / MODEL_FILE)
    accuracy = {}
    for name, path in (("int8", folder), ("float", source)):
        predicted = predict_classes(session(path / MODEL_FILE), dataset.x_test.astype(np.float32))
        accuracy[name] = float(np.mean(predicted == dataset.y_test))
    assert accuracy["int8"] == pytest.approx(q.accuracy, abs=1e-9) == card.metrics.accuracy
    assert accuracy["float"] == pytest.approx(q.source_accuracy, abs=1e-9)
    assert accuracy["float"] - accuracy["int8"] <= 0.005
    assert {(s.batch, s.model) for s in q.speed} == {
        (b, m) for b in (1, 32) for m in (q.source, card.name)
    }
