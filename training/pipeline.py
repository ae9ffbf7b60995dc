"""data → train → evaluate → export → parity check → publish, for one recipe."""

from __future__ import annotations

import json
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from modelrepo import (
    MODEL_FILE,
    DatasetInfo,
    ModelCard,
    Parity,
    Provenance,
    TestMetrics,
    file_sha256,
    publish,
    read_card,
)
from training import data, evaluate, export, plots
from training.batches import collate
from training.config import TrainConfig
from training.errors import ParityError
from training.loop import History, train
from training.recipes import Recipe, Samples

PARITY_TOLERANCE = 1e-4
PARITY_MIN_SAMPLES = 256


@dataclass
class Result:
    version: int
    folder: Path
    card: ModelCard
    history: History


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


@dataclass
class Candidate:
    """A trained, exported, parity-checked and evaluated model, staged outside the repository
    (``model.onnx``, plots, ``run.json``) until it is published or discarded."""

    recipe: Recipe
    staging: Path
    metrics: TestMetrics
    history: History
    card: Callable[[int], ModelCard]

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def load_dataset(recipe: Recipe, config: TrainConfig) -> data.Dataset:
    """The recipe's dataset; ``--quick`` keeps a stratified subset of each split."""
    dataset = recipe.load()
    if config.quick:
        n_train, n_test = recipe.quick_sizes
        keep_train = data.subsample(dataset.y_train, n_train, config.seed)
        keep_test = data.subsample(dataset.y_test, n_test, config.seed)
        dataset.x_train, dataset.y_train = (
            data.take(dataset.x_train, keep_train),
            dataset.y_train[keep_train],
        )
        dataset.x_test, dataset.y_test = (
            data.take(dataset.x_test, keep_test),
            dataset.y_test[keep_test],
        )
    return dataset


def build_candidate(
    recipe: Recipe,
    config: TrainConfig,
    dataset: data.Dataset,
    extra: tuple[Samples, np.ndarray] | None = None,
) -> Candidate:
    """Train on the training split (plus ``extra`` labelled examples, e.g. feedback), export,
    check parity and evaluate the exported graph on the raw test split."""
    config.validate()
    seed_everything(config.seed, config.threads)
    fingerprint = dataset.fingerprint()
    train_idx, val_idx = data.split_validation(dataset.y_train, config.val_fraction, config.seed)
    x_train, y_train = data.take(dataset.x_train, train_idx), dataset.y_train[train_idx]
    x_val, y_val = data.take(dataset.x_train, val_idx), dataset.y_train[val_idx]
    if extra is not None and len(extra[1]):
        x_train = (
            [*x_train, *extra[0]]
            if isinstance(x_train, list)
            else np.concatenate([x_train, np.asarray(extra[0], dtype=x_train.dtype)])
        )
        y_train = np.concatenate([y_train, extra[1]])
    print(
        f"{recipe.name}: {dataset.name}, {len(y_train)} train"
        f"{f' (incl. {len(extra[1])} feedback)' if extra is not None else ''} / "
        f"{len(y_val)} validation / {len(dataset.y_test)} test samples"
        f"{' (quick)' if config.quick else ''}",
        flush=True,
    )
    net = recipe.build(x_train, len(dataset.labels), config)
    started = time.perf_counter()
    history = train(net, x_train, y_train, x_val, y_val, config, recipe.augment)

    # Parity runs on ≥ 256 samples: the test split, topped up from the training split if small.
    parity_x = dataset.x_test
    if len(dataset.y_test) < PARITY_MIN_SAMPLES:
        top_up = PARITY_MIN_SAMPLES - len(dataset.y_test)
        parity_x = (
            list(parity_x) + list(dataset.x_train[:top_up])
            if isinstance(parity_x, list)
            else np.concatenate([parity_x, dataset.x_train[:top_up]])
        )
    staging = Path(tempfile.mkdtemp(prefix=f"nnserve-{recipe.name}-"))
    try:
        model_path = staging / MODEL_FILE
        example = collate(x_train, np.arange(min(2, len(y_train))))[0]
        export.export(net, recipe.input, example, model_path)
        session = export.session(model_path)
        max_diff = export.parity(net, session, parity_x)
        if not max_diff <= PARITY_TOLERANCE:
            raise ParityError(
                f"onnxruntime differs from PyTorch by {max_diff:.3g} (tolerance {PARITY_TOLERANCE})"
            )
        # The recorded figures come from the exported graph on raw test inputs: what is served.
        metrics = evaluate.test_metrics(
            export.run(session, dataset.x_test)["logits"], dataset.y_test, dataset.labels
        )
        plots.learning_curves(history, recipe.name, staging / "learning_curve.png")
        plots.confusion(
            metrics.confusion_matrix, dataset.labels, recipe.name, staging / "confusion_matrix.png"
        )
        (staging / "run.json").write_text(
            json.dumps({"config": config.as_dict(), "history": history.__dict__}, indent=1) + "\n"
        )
        fields = {
            "metrics": metrics,
            "onnx_sha256": file_sha256(model_path),
            "parity": Parity(
                max_abs_diff=max_diff, n_samples=len(parity_x), tolerance=PARITY_TOLERANCE
            ),
            "reference": export.reference_cases(
                session, recipe.input, _reference_groups(dataset.x_test)
            ),
        }
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    wall_time = round(time.perf_counter() - started, 2)
    baseline = (
        evaluate.feature_baselines(x_train, dataset.feature_names) if dataset.feature_names else []
    )

    def card(version: int) -> ModelCard:
        return ModelCard(
            name=recipe.name,
            version=version,
            kind=recipe.kind,  # type: ignore[arg-type]
            task="classification",
            description=recipe.description,
            inputs=[recipe.input],
            outputs=export.output_specs(len(dataset.labels)),
            labels=dataset.labels,
            feature_names=dataset.feature_names,
            provenance=Provenance(
                dataset=DatasetInfo(
                    name=dataset.name,
                    source=dataset.source,
                    fingerprint=fingerprint,
                    n_train=len(y_train),
                    n_val=len(y_val),
                    n_test=len(dataset.y_test),
                    split=dataset.split,
                ),
                hyperparameters={
                    **config.as_dict(),
                    "architecture": repr(net).replace("\n", ""),
                    "feedback_examples": 0 if extra is None else len(extra[1]),
                },
                seed=config.seed,
                epochs_run=history.epochs_run,
                best_epoch=history.best_epoch,
                wall_time_s=wall_time,
                torch_version=torch.__version__,
                onnx_version=onnx.__version__,
                onnxruntime_version=ort.__version__,
                opset=export.OPSET,
                created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                trained_on=f"{platform.machine()} {torch.get_num_threads()} threads",
            ),
            baseline=baseline,
            **fields,  # type: ignore[arg-type]
        )

    return Candidate(recipe, staging, metrics, history, card)


def publish_candidate(candidate: Candidate, repository: Path) -> Result:
    """Publish a staged candidate atomically as the next version; the staging folder goes."""

    def write(folder: Path) -> None:
        for path in candidate.staging.iterdir():
            shutil.copy2(path, folder / path.name)

    try:
        version, folder = publish(repository, candidate.recipe.name, write, candidate.card)
    finally:
        candidate.discard()
    result = Result(version, folder, read_card(folder), candidate.history)
    m, history = result.card.metrics, candidate.history
    print(
        f"{candidate.recipe.name}: published version {version} at {folder}: test accuracy "
        f"{m.accuracy:.4f} (n={m.n}), loss {m.loss:.4f}, "
        f"parity {result.card.parity.max_abs_diff:.2e}, "
        f"{history.epochs_run} epochs in {history.wall_time_s:.1f}s",
        flush=True,
    )
    return result


def run(recipe: Recipe, config: TrainConfig, repository: Path) -> Result:
    """Train, export, check and publish one new version of ``recipe``."""
    config.validate()
    candidate = build_candidate(recipe, config, load_dataset(recipe, config))
    return publish_candidate(candidate, repository)


def _reference_groups(x: np.ndarray | list[np.ndarray]) -> list[np.ndarray | list[np.ndarray]]:
    """A few test samples for the load-time self-check; sequences as groups of one length."""
    if not isinstance(x, list):
        return [x[:4]]
    by_length: dict[int, list[np.ndarray]] = {}
    for seq in x:
        by_length.setdefault(len(seq), []).append(seq)
    lengths = sorted(by_length)
    picks = sorted({lengths[0], lengths[len(lengths) // 2], lengths[-1]})
    return [by_length[n][:2] for n in picks]
