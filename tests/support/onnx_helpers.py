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


def tiny_classifier(
    path: Path,
    *,
    features: int = 4,
    classes: int = 3,
    batch: int | str = "N",
    opset: int = 17,
    seed: int = 0,
) -> np.ndarray:
    """Write a small softmax classifier made here (not one of the shipped models) to ``path``:
    ``x [batch, features]`` → ``probabilities [batch, classes]``. Returns its weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((features, classes)).astype(np.float32)
    bias = rng.standard_normal(classes).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return weights
