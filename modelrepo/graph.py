"""What an ONNX graph declares, read through onnxruntime: its inputs and outputs as
``TensorSpec``s, inputs that satisfy them, and the reference cases a card records.

Shared by ``python -m modelrepo import`` (a user's ONNX file), ``training.publish`` (a
user's PyTorch module) and the service (a bare ``model.onnx`` without ``model.json``), so the
three read a graph the same way."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import numpy as np
import onnxruntime as ort

from modelrepo.card import Datatype, Provenance, ReferenceCase, Tensor, TensorSpec

#: onnxruntime's element types → Open Inference Protocol datatypes (the numeric ones).
DATATYPES: dict[str, Datatype] = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
    "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(bool)": "BOOL",
}  # fmt: skip
#: Size given to a dynamic axis other than the batch axis when inputs are generated.
GENERATED_AXIS = 8


class GraphError(ValueError):
    """The graph cannot be served as declared (the message says what and why)."""


def session(path: str, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def spec_of(arg: Any) -> TensorSpec:
    """One graph input or output (an onnxruntime ``NodeArg``); named or unknown axes → -1."""
    datatype = DATATYPES.get(arg.type)
    if datatype is None:
        raise GraphError(f"{arg.name!r} has type {arg.type}, not a numeric tensor")
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


def specs(sess: ort.InferenceSession) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs. nnserve serves one FP32 input with a dynamic batch
    axis first (the batcher stacks requests along it); anything else is a GraphError."""
    inputs = [spec_of(a) for a in sess.get_inputs()]
    outputs = [spec_of(a) for a in sess.get_outputs()]
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise GraphError(f"nnserve serves graphs with one input; this one has {names}")
    (spec,) = inputs
    if spec.datatype != "FP32":
        raise GraphError(f"input {spec.name!r} is {spec.datatype}; nnserve serves FP32 inputs")
    if not spec.shape or spec.shape[0] != -1:
        raise GraphError(
            f"input {spec.name!r} has shape {spec.shape}: no batch axis (its first axis must "
            "be dynamic, e.g. torch.onnx.export(..., dynamic_shapes=...) or dim_param 'N'), "
            "and nnserve batches requests along it"
        )
    for out in outputs:
        if not out.shape or out.shape[0] != -1:
            raise GraphError(f"output {out.name!r} has shape {out.shape}: no batch axis first")
    return inputs, outputs


def provenance(origin: str, **fields: Any) -> Provenance:
    """Provenance of a version made now from a graph (``imported``, ``published``,
    ``derived``): the onnx / onnxruntime versions and the time, plus ``fields``."""
    try:
        onnx_version = metadata.version("onnx")
    except metadata.PackageNotFoundError:  # the service's install may go without onnx
        onnx_version = ""
    return Provenance(
        origin=origin,
        onnx_version=onnx_version,
        onnxruntime_version=ort.__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        **fields,
    )


def generated_inputs(spec: TensorSpec, n: int, seed: int = 0) -> np.ndarray:
    """``n`` valid samples for ``spec``: uniform within its value range when it declares one,
    else standard normal; dynamic axes past the batch axis get :data:`GENERATED_AXIS`."""
    shape = [n, *(GENERATED_AXIS if d == -1 else d for d in spec.shape[1:])]
    rng = np.random.default_rng(seed)
    if spec.min_value is not None and spec.max_value is not None:
        return rng.uniform(spec.min_value, spec.max_value, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def check_samples(spec: TensorSpec, samples: np.ndarray) -> np.ndarray:
    """``samples`` as FP32, if their shape fits ``spec`` (a batch of at least one)."""
    if (
        samples.ndim != len(spec.shape)
        or len(samples) == 0
        or any(
            want not in (-1, got)
            for want, got in zip(spec.shape[1:], samples.shape[1:], strict=True)
        )
    ):
        raise GraphError(
            f"samples have shape {list(samples.shape)}; input {spec.name!r} takes "
            f"{spec.shape} (-1: any size, the first axis is the batch)"
        )
    if not np.issubdtype(samples.dtype, np.number) or not np.isfinite(samples).all():
        raise GraphError("samples must be finite numbers")
    return samples.astype(np.float32)


def reference(
    sess: ort.InferenceSession, spec: TensorSpec, groups: Sequence[np.ndarray]
) -> list[ReferenceCase]:
    """Each group of inputs with every output onnxruntime gives for it."""
    names = [o.name for o in sess.get_outputs()]
    cases = []
    for array in groups:
        outputs = sess.run(names, {spec.name: array})
        cases.append(
            ReferenceCase(
                inputs=[_tensor(spec.name, array)],
                outputs=[_tensor(n, np.asarray(v)) for n, v in zip(names, outputs, strict=True)],
            )
        )
    return cases


def _tensor(name: str, array: np.ndarray) -> Tensor:
    return Tensor(
        name=name,
        datatype=DATATYPES.get(f"tensor({_ORT_NAMES.get(array.dtype.name, array.dtype.name)})",
                               "FP32"),
        shape=list(array.shape),
        data=array.astype(np.float64).ravel().tolist(),
    )  # fmt: skip


_ORT_NAMES = {"float32": "float", "float64": "double"}
