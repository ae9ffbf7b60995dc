"""Direct onnxruntime runs, written independently of training and serving code so the tests
check those parts against a plain reading of the ONNX file and model.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from modelrepo import ModelCard, Tensor


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def as_array(tensor: Tensor) -> np.ndarray:
    return np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)


def reference_max_error(sess: ort.InferenceSession, card: ModelCard) -> float:
    worst = 0.0
    for case in card.reference:
        feeds = {t.name: as_array(t) for t in case.inputs}
        names = [t.name for t in case.outputs]
        for got, want in zip(sess.run(names, feeds), case.outputs, strict=True):
            worst = max(worst, float(np.abs(got - as_array(want)).max()))
    return worst


def predict_classes(sess: ort.InferenceSession, x: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """argmax of the probabilities output; sequences one at a time (no padding at all)."""
    name = sess.get_inputs()[0].name
    if isinstance(x, list):
        return np.array(
            [
                sess.run(["probabilities"], {name: s[None].astype(np.float32)})[0][0].argmax()
                for s in x
            ]
        )
    probs = sess.run(["probabilities"], {name: np.asarray(x, dtype=np.float32)})[0]
    return probs.argmax(axis=1)
