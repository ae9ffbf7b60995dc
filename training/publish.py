"""``training.publish``: the end of any PyTorch training script, and of the built-in recipes.

    from training import publish
    publish(net, x_val[:256], name="my-model", labels=["cat", "dog"])

Export with a dynamic batch axis (``onnx.checker``), parity between onnxruntime and PyTorch
(at most 1e-4 on every output, or nothing is published), reference cases for the service's
load-time self-check, a complete ``model.json``, and an atomic publish as the next version.
The recipes of ``python -m training`` stage their graph with :func:`stage` too, so there is
one export path."""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from modelrepo import (
    MODEL_FILE,
    DatasetInfo,
    ExplainBaseline,
    ModelCard,
    Parity,
    Provenance,
    ReferenceCase,
    TensorSpec,
    TestMetrics,
    file_sha256,
    graph,
)
from modelrepo import publish as publish_folder
from training import export
from training.config import TrainConfig
from training.distributed import Group
from training.errors import ParityError, TrainingError
from training.export import Samples, Task

PARITY_TOLERANCE = 1e-4


class DataSource(Protocol):
    """What a training run's card says of its data (a Dataset, a Series)."""

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> str: ...

    def fingerprint(self) -> str: ...


def trained_provenance(
    data: DataSource,
    counts: tuple[int, int, int],
    split: str,
    config: TrainConfig,
    net: nn.Module,
    feedback: int,
    epochs: tuple[int, int],
    wall_time_s: float,
    group: Group,
) -> Provenance:
    """A recipe run's provenance: the data (``counts``: train, validation, test), every
    setting, the architecture, ``epochs`` (run, best), versions and where it trained."""
    spread = f" x {group.world_size} processes ({group.backend})" if group.distributed else ""
    return Provenance(
        origin="trained",
        dataset=DatasetInfo(
            name=data.name,
            source=data.source,
            fingerprint=data.fingerprint(),
            n_train=counts[0],
            n_val=counts[1],
            n_test=counts[2],
            split=split,
        ),
        hyperparameters={
            **config.as_dict(),
            "architecture": repr(net).replace("\n", ""),
            "feedback_examples": feedback,
        },
        seed=config.seed,
        epochs_run=epochs[0],
        best_epoch=epochs[1],
        wall_time_s=wall_time_s,
        torch_version=torch.__version__,
        onnx_version=onnx.__version__,
        onnxruntime_version=ort.__version__,
        opset=export.OPSET,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        trained_on=f"{platform.machine()} {torch.get_num_threads()} threads{spread}",
    )


@dataclass
class Staged:
    """``model.onnx`` exported into ``folder`` and checked against PyTorch."""

    folder: Path
    session: ort.InferenceSession
    sha256: str
    parity: Parity
    reference: list[ReferenceCase]  # the service's load-time self-check
    outputs: list[TensorSpec]

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def stage(
    net: nn.Module,
    spec: TensorSpec,
    example: torch.Tensor,
    parity_x: Samples,
    reference_groups: Sequence[np.ndarray],
    task: Task,
    folder: Path,
) -> Staged:
    """Export ``net`` into ``folder`` and check onnxruntime against PyTorch on ``parity_x``;
    raises :class:`ParityError` beyond :data:`PARITY_TOLERANCE`."""
    path = folder / MODEL_FILE
    export.export(net, spec, example, path, task)
    session = export.session(path)
    max_diff = export.parity(net, session, parity_x, task)
    if not max_diff <= PARITY_TOLERANCE:
        raise ParityError(
            f"onnxruntime differs from PyTorch by {max_diff:.3g} (tolerance {PARITY_TOLERANCE})"
        )
    _, outputs = graph.specs(session)
    return Staged(
        folder=folder,
        session=session,
        sha256=file_sha256(path),
        parity=Parity(max_abs_diff=max_diff, n_samples=len(parity_x), tolerance=PARITY_TOLERANCE),
        reference=graph.reference(session, spec, reference_groups),
        outputs=outputs,
    )


def publish(
    module: nn.Module,
    example_inputs: torch.Tensor | np.ndarray,
    *,
    name: str,
    labels: Sequence[str] = (),
    task: Task = "classification",
    repository: Path | str = "models",
    metrics: TestMetrics | None = None,
    description: str = "",
    input_name: str = "inputs",
    dynamic_axes: Sequence[int] = (),
    value_range: tuple[float, float] | None = None,
    feature_names: Sequence[str] = (),
) -> tuple[int, Path]:
    """Publish ``module`` as the next version of ``name``; returns ``(version, folder)``.

    ``example_inputs``: real inputs ``[n, ...]`` (n ≥ 2; a few hundred make a better parity
    check), the batch axis first and always dynamic; ``dynamic_axes`` names other axes of
    any size (e.g. ``(1,)`` for sequence length). A classifier's module returns logits
    ``[batch, len(labels)]``; softmax is added to the graph. ``metrics``: your test figures,
    recorded in the card. Raises TrainingError / RepositoryError; nothing is written then.
    """
    x = _array(example_inputs)
    if x.ndim < 2 or len(x) < 2:
        raise TrainingError(f"example_inputs must be a batch [n >= 2, ...], not {list(x.shape)}")
    spec = TensorSpec(
        name=input_name,
        datatype="FP32",
        shape=[-1 if axis == 0 or axis in dynamic_axes else size for axis, size in
               enumerate(x.shape)],
        min_value=value_range[0] if value_range else None,
        max_value=value_range[1] if value_range else None,
    )  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix=f"nnserve-publish-{name}-"))
    try:
        staged = stage(module, spec, torch.from_numpy(x[:2]), x, [x[:4]], task, folder)
        scores = staged.reference[0].outputs[-1].shape
        if task == "classification" and scores[1:] != [len(labels)]:
            raise TrainingError(
                f"{len(labels)} labels for a classifier whose logits are {scores[1:]} wide"
            )
        provenance = graph.provenance(
            "published",
            torch_version=torch.__version__,
            opset=export.OPSET,
            command=" ".join(sys.argv),
        )

        def card(version: int) -> ModelCard:
            return ModelCard(
                name=name,
                version=version,
                kind="custom",
                task=task,
                description=description,
                inputs=[spec],
                outputs=staged.outputs,
                labels=list(labels),
                feature_names=list(feature_names),
                metrics=metrics,
                provenance=provenance,
                onnx_sha256=staged.sha256,
                parity=staged.parity,
                reference=staged.reference,
                explain_baseline=explain_baseline(x, spec),
            )

        try:
            card(1)  # every field valid before anything is written
        except ValueError as exc:
            raise TrainingError(f"invalid model card: {exc}") from exc
        return publish_folder(Path(repository), name, lambda tmp: _copy(folder, tmp), card)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def explain_baseline(x: np.ndarray | list[np.ndarray], spec: TensorSpec) -> ExplainBaseline:
    """The baseline explanations occlude with (``service.runtime.explain``), from training
    inputs ``x``: what a removed part of an input is replaced by, i.e. the average input.

    * fixed shapes (a tabular row, an image): the mean over the samples, element by element
      (per-feature means; the mean image);
    * a variable axis besides the batch (sequences of any length): the mean of each channel
      over every time step of every sequence, shape ``[channels]``, since no per-step mean
      fits a sequence of another length.
    """
    if isinstance(x, list) or -1 in spec.shape[1:]:
        steps = np.concatenate([np.reshape(s, (-1, spec.shape[-1])) for s in x])
        mean = steps.astype(np.float64).mean(axis=0)
        how = "mean of each channel over every time step of the training inputs"
    else:
        mean = np.asarray(x, dtype=np.float64).mean(axis=0)
        how = "element-wise mean of the training inputs"
    return ExplainBaseline(
        description=f"{how} (n={len(x)})",
        shape=list(mean.shape),
        data=[float(v) for v in mean.ravel()],
    )


def _array(inputs: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.detach().cpu().numpy()
    return np.ascontiguousarray(inputs, dtype=np.float32)


def _copy(source: Path, target: Path) -> None:
    for path in source.iterdir():
        shutil.copy2(path, target / path.name)
