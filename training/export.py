"""PyTorch → ONNX: export with dynamic axes, ``onnx.checker``, onnxruntime runs and parity."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from modelrepo import ReferenceCase, Tensor, TensorSpec
from training.batches import collate
from training.loop import predict_logits
from training.nets import WithProbabilities

OPSET = 18
OUTPUTS = ("logits", "probabilities")
Samples = np.ndarray | list[np.ndarray]


def export(net: nn.Module, spec: TensorSpec, example: torch.Tensor, path: Path) -> None:
    """Write ``net`` (+ softmax) to ``path`` with every ``-1`` axis of ``spec`` dynamic."""
    graph = WithProbabilities(net).eval()
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
                output_names=list(OUTPUTS),
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
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, x: Samples, batch_size: int = 512) -> dict[str, np.ndarray]:
    """Every output for every sample of ``x``, in order. Sequences run grouped by length."""
    input_name = sess.get_inputs()[0].name
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
        for name, value in zip(
            OUTPUTS, sess.run(list(OUTPUTS), {input_name: inputs.numpy()}), strict=True
        ):
            if name not in results:
                results[name] = np.empty((len(x), *value.shape[1:]), dtype=value.dtype)
            results[name][index] = value
    return results


def parity(net: nn.Module, sess: ort.InferenceSession, x: Samples) -> float:
    """max |onnxruntime - PyTorch| over both outputs; PyTorch runs its training-time path
    (padded + packed for sequences), onnxruntime the exported graph on raw inputs."""
    logits = predict_logits(net, x)
    probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    expected = {"logits": logits, "probabilities": probabilities}
    got = run(sess, x)
    return max(float(np.abs(got[k] - expected[k]).max()) for k in OUTPUTS)


def reference_cases(
    sess: ort.InferenceSession, spec: TensorSpec, groups: list[Samples]
) -> list[ReferenceCase]:
    """Inputs and the outputs onnxruntime gives for them, one case per group of samples."""
    cases = []
    for group in groups:
        (inputs,) = collate(group, np.arange(len(group)))[:1]
        array = inputs.numpy()
        outputs = sess.run(list(OUTPUTS), {spec.name: array})
        cases.append(
            ReferenceCase(
                inputs=[
                    Tensor(
                        name=spec.name,
                        datatype=spec.datatype,
                        shape=list(array.shape),
                        data=array.ravel().tolist(),
                    )
                ],
                outputs=[
                    Tensor(
                        name=name,
                        datatype="FP32",
                        shape=list(value.shape),
                        data=value.ravel().tolist(),
                    )
                    for name, value in zip(OUTPUTS, outputs, strict=True)
                ],
            )
        )
    return cases


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
