"""Import an ONNX file from anywhere as the next version of a model: the graph is checked
(``onnx.checker``, opset, one FP32 input with a batch axis), its inputs and outputs become
the card's, reference inputs come from the user's samples or are generated from the
declared shapes, onnxruntime's outputs for them are recorded as the self-check, and the
version is published atomically with a card whose provenance says ``imported`` (source
sha256, command line). Nothing is written unless every check passes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from modelrepo import graph
from modelrepo.card import ModelCard, TensorSpec, is_valid_name
from modelrepo.graph import GraphError, check_samples, generated_inputs, reference, session, specs
from modelrepo.layout import MODEL_FILE, file_sha256, publish

#: Reference cases recorded per import: samples given are used up to this many.
REFERENCE_SAMPLES = 8


def import_onnx(
    source: Path,
    repository: Path,
    name: str,
    *,
    task: Literal["classification", "regression"] = "classification",
    labels: list[str] | None = None,
    samples: np.ndarray | None = None,
    description: str = "",
    command: str = "",
) -> tuple[int, Path]:
    """Publish ``source`` as the next version of ``name``; ``(version, folder)``. Raises
    GraphError (or PublishError) with a one-line reason, leaving the repository as it was."""
    if not is_valid_name(name):
        raise GraphError(f"invalid model name {name!r}: expected [a-z0-9][a-z0-9-]{{0,62}}")
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise GraphError(f"cannot read {source}: {exc.strerror}") from exc
    opset = _checked_opset(source, data)
    try:
        sess = session(str(source))
    except Exception as exc:  # onnxruntime raises its own untyped failures
        raise GraphError(
            f"onnxruntime {ort.__version__} cannot load {source} (opset {opset}): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    inputs, outputs = specs(sess)
    (spec,) = inputs
    batch = (
        check_samples(spec, samples)[:REFERENCE_SAMPLES]
        if samples is not None
        else generated_inputs(spec, 4)
    )
    try:
        cases = reference(sess, spec, [batch])
    except Exception as exc:
        raise GraphError(f"the graph fails on the reference inputs: {exc}") from exc
    labels = list(labels or [])
    if task == "classification":
        _check_labels(labels, outputs, cases[0].outputs[_scores(outputs)].shape)
    elif labels:
        raise GraphError("labels are for classifiers; a regression model takes none")
    digest = file_sha256(source)
    provenance = graph.provenance("imported", opset=opset, source_sha256=digest, command=command)

    def card(version: int) -> ModelCard:
        return ModelCard(
            name=name,
            version=version,
            kind="custom",
            task=task,
            description=description or f"imported from {source.name}",
            inputs=inputs,
            outputs=outputs,
            labels=labels,
            provenance=provenance,
            onnx_sha256=digest,
            reference=cases,
        )

    try:
        card(1)  # every field valid before anything is written
    except ValueError as exc:
        raise GraphError(f"invalid model card: {exc}") from exc

    def write(folder: Path) -> None:
        (folder / MODEL_FILE).write_bytes(data)

    return publish(repository, name, write, card)


def _checked_opset(source: Path, data: bytes) -> int:
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraphError(f"{source} is not a valid ONNX model: {first}") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    newest = onnx.defs.onnx_opset_version()
    if not 7 <= opset <= newest:
        raise GraphError(f"{source} uses opset {opset}; supported: 7 to {newest}")
    return opset


def _scores(outputs: list[TensorSpec]) -> int:
    """The output whose argmax is the class: ``probabilities`` if there is one, else the
    last (as the service reads it)."""
    names = [o.name for o in outputs]
    return names.index("probabilities") if "probabilities" in names else len(names) - 1


def _check_labels(labels: list[str], outputs: list[TensorSpec], shape: list[int]) -> None:
    scores = outputs[_scores(outputs)]
    if not labels:
        raise GraphError(
            f"a classifier needs its labels (--labels), one per column of output {scores.name!r}"
        )
    if len(shape) != 2 or shape[1] != len(labels):
        raise GraphError(
            f"{len(labels)} labels for output {scores.name!r} of shape {shape}: a classifier's "
            "scores are [batch, one per label]"
        )
    if len(set(labels)) != len(labels):
        raise GraphError("labels must be unique")
