"""PyTorch → ONNX: export with dynamic axes, ``onnx.checker``, onnxruntime runs and parity.

The one export path: the built-in recipes and ``training.publish`` (a user's own module) both
come through :func:`export` and :func:`parity`. A classifier's graph outputs ``logits`` and
their ``probabilities``; a regression model's, ``predictions``."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from modelrepo import TensorSpec, graph
from training.batches import collate
from training.loop import predict_logits
from training.nets import WithProbabilities

OPSET = 18
OUTPUTS = ("logits", "probabilities")
REGRESSION_OUTPUTS = ("predictions",)
Samples = np.ndarray | list[np.ndarray]
Task = Literal["classification", "regression"]


def outputs_of(task: Task) -> tuple[str, ...]:
    return OUTPUTS if task == "classification" else REGRESSION_OUTPUTS


def export(
    net: nn.Module,
    spec: TensorSpec,
    example: torch.Tensor,
    path: Path,
    task: Task = "classification",
) -> None:
    """Write ``net`` (+ softmax for a classifier) to ``path`` with every ``-1`` axis of
    ``spec`` dynamic; ``onnx.checker`` passes on the result."""
    graph = (WithProbabilities(net) if task == "classification" else net).eval()
    dims = {axis: torch.export.Dim.DYNAMIC for axis, size in enumerate(spec.shape) if size == -1}
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                (example,),
                input_names=[spec.name],
                output_names=list(outputs_of(task)),
                opset_version=OPSET,
                dynamic_shapes=(dims,),
                dynamo=True,
                verbose=False,
            )
    finally:
        quiet.setLevel(level)
    assert program is not None
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)


def session(path: Path) -> ort.InferenceSession:
    return graph.session(str(path))


def run(sess: ort.InferenceSession, x: Samples, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Every output for every sample of ``x``, in order. Sequences run grouped by length."""
    input_name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    if isinstance(x, list):
        groups: dict[int, list[int]] = defaultdict(list)
        for i, seq in enumerate(x):
            groups[len(seq)].append(i)
        batches = [np.array(idx) for idx in groups.values()]
    else:
        batches = [np.arange(s, min(s + batch_size, len(x))) for s in range(0, len(x), batch_size)]
    results: dict[str, np.ndarray] = {}
    for index in batches:
        (inputs, *_) = collate(x, index)
        for name, value in zip(names, sess.run(names, {input_name: inputs.numpy()}), strict=True):
            if name not in results:
                results[name] = np.empty((len(x), *value.shape[1:]), dtype=value.dtype)
            results[name][index] = value
    return results


def parity(net: nn.Module, sess: ort.InferenceSession, x: Samples, task: Task) -> float:
    """max |onnxruntime - PyTorch| over every output; PyTorch runs its training-time path
    (padded + packed for sequences), onnxruntime the exported graph on raw inputs."""
    raw = predict_logits(net, x)
    if task == "classification":
        probabilities = torch.softmax(torch.from_numpy(raw), dim=1).numpy()
        expected = {"logits": raw, "probabilities": probabilities}
    else:
        expected = {"predictions": raw}
    got = run(sess, x)
    return max(float(np.abs(got[k] - expected[k]).max()) for k in expected)


def groups(x: Samples, index: np.ndarray) -> np.ndarray:
    """The samples ``index`` of ``x`` as one input array (sequences: of one length)."""
    return collate(x, index)[0].numpy()


def output_specs(n_classes: int) -> list[TensorSpec]:
    return [
        TensorSpec(
            name="logits",
            datatype="FP32",
            shape=[-1, n_classes],
            description="unnormalized class scores",
        ),
        TensorSpec(
            name="probabilities",
            datatype="FP32",
            shape=[-1, n_classes],
            description="softmax of the logits, in label order",
            min_value=0,
            max_value=1,
        ),
    ]
