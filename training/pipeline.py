"""data → train → export + parity check → evaluate the exported graph → publish, for one recipe."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelrepo import (
    ModelCard,
    TestMetrics,
    publish,
    read_card,
)
from training import data, distributed, evaluate, export, plots
from training.batches import collate
from training.checkpoint import RunFolder, open_run
from training.config import TrainConfig
from training.distributed import SINGLE, Group
from training.loop import History, train
from training.publish import Staged, explain_baseline, stage, trained_provenance
from training.recipes import Recipe, Samples

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


@dataclass
class Splits:
    """What one run trains and validates on: the training split minus a stratified validation
    share, plus any ``extra`` labelled examples (feedback) on the training side."""

    x_train: Samples
    y_train: np.ndarray
    x_val: Samples
    y_val: np.ndarray
    feedback: int | None  # feedback examples added; None when no feedback was asked for


@dataclass
class Trained:
    """A trained network (in every process of a torchrun group), not yet exported."""

    splits: Splits
    net: nn.Module
    history: History
    started: float  # time.perf_counter() when training began
    group: Group
    run_id: str | None = None  # the run folder's: recorded in run.json


def build_candidate(
    recipe: Recipe,
    config: TrainConfig,
    dataset: data.Dataset,
    extra: tuple[Samples, np.ndarray] | None = None,
) -> Candidate:
    """Train on the training split (plus ``extra`` labelled examples, e.g. feedback), export,
    check parity and evaluate the exported graph on the raw test split."""
    return package(recipe, config, dataset, train_model(recipe, config, dataset, extra))


def train_model(
    recipe: Recipe,
    config: TrainConfig,
    dataset: data.Dataset,
    extra: tuple[Samples, np.ndarray] | None = None,
    group: Group = SINGLE,
    folder: RunFolder | None = None,
) -> Trained:
    """Seed, split and train: the part every process of a torchrun group runs."""
    config.validate()
    seed_everything(config.seed, config.threads)
    splits = split_data(recipe, config, dataset, extra)
    run_id = None if folder is None else folder.run_id()
    started = time.perf_counter()
    net, history = fit(recipe, config, splits, len(dataset.labels), group, folder)
    return Trained(splits, net, history, started, group, run_id)


def package(
    recipe: Recipe, config: TrainConfig, dataset: data.Dataset, trained: Trained
) -> Candidate:
    """Export, check parity, evaluate the exported graph and stage it: rank 0's part."""
    splits, net, history = trained.splits, trained.net, trained.history
    staging = Path(tempfile.mkdtemp(prefix=f"nnserve-{recipe.name}-"))
    try:
        exported = export_checked(recipe, net, splits, dataset, staging)
        metrics = evaluate_exported(exported, dataset)
        stage_artifacts(
            staging,
            recipe.name,
            config,
            history,
            metrics,
            dataset.labels,
            trained.group,
            trained.run_id,
        )
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    wall_time = round(time.perf_counter() - trained.started, 2)
    card = card_maker(
        recipe, config, dataset, splits, net, history, exported, metrics, wall_time, trained.group
    )
    return Candidate(recipe, staging, metrics, history, card)


def split_data(
    recipe: Recipe,
    config: TrainConfig,
    dataset: data.Dataset,
    extra: tuple[Samples, np.ndarray] | None,
) -> Splits:
    """Carve the validation split out of the training split, add ``extra`` to the training
    side, and say how many samples each part has."""
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
    feedback = None if extra is None else len(extra[1])
    print(
        f"{recipe.name}: {dataset.name}, {len(y_train)} train"
        f"{f' (incl. {feedback} feedback)' if feedback is not None else ''} / "
        f"{len(y_val)} validation / {len(dataset.y_test)} test samples"
        f"{' (quick)' if config.quick else ''}",
        flush=True,
    )
    return Splits(x_train, y_train, x_val, y_val, feedback)


def fit(
    recipe: Recipe,
    config: TrainConfig,
    splits: Splits,
    n_classes: int,
    group: Group = SINGLE,
    folder: RunFolder | None = None,
) -> tuple[nn.Module, History]:
    """Build the recipe's network (normalization fitted on the training side) and train it."""
    net = recipe.build(splits.x_train, n_classes, config)
    history = train(
        net,
        splits.x_train,
        splits.y_train,
        splits.x_val,
        splits.y_val,
        config,
        recipe.augment,
        group,
        folder,
    )
    return net, history


def export_checked(
    recipe: Recipe, net: nn.Module, splits: Splits, dataset: data.Dataset, staging: Path
) -> Staged:
    """Export ``net`` into ``staging`` (``training.publish.stage``, the one export path) and
    check onnxruntime against PyTorch on ≥ 256 samples: the test split, topped up from the
    training split if small. Raises :class:`ParityError`."""
    parity_x = dataset.x_test
    if len(dataset.y_test) < PARITY_MIN_SAMPLES:
        top_up = PARITY_MIN_SAMPLES - len(dataset.y_test)
        parity_x = (
            list(parity_x) + list(dataset.x_train[:top_up])
            if isinstance(parity_x, list)
            else np.concatenate([parity_x, dataset.x_train[:top_up]])
        )
    example = collate(splits.x_train, np.arange(min(2, len(splits.y_train))))[0]
    groups = [export.groups(g, np.arange(len(g))) for g in _reference_groups(dataset.x_test)]
    return stage(net, recipe.input, example, parity_x, groups, "classification", staging)


def evaluate_exported(exported: Staged, dataset: data.Dataset) -> TestMetrics:
    """The recorded figures: the exported graph on the raw test inputs, i.e. what is served."""
    logits = export.run(exported.session, dataset.x_test)["logits"]
    return evaluate.test_metrics(logits, dataset.y_test, dataset.labels)


def stage_artifacts(
    staging: Path,
    name: str,
    config: TrainConfig,
    history: History,
    metrics: TestMetrics,
    labels: list[str],
    group: Group = SINGLE,
    run_id: str | None = None,
) -> None:
    """Next to ``model.onnx``: the learning curves, the confusion matrix and ``run.json``
    (config, how the run was spread: processes, global batch and its lr; per-epoch history;
    the run folder's id, by which a restarted run knows its version)."""
    plots.learning_curves(history, name, staging / "learning_curve.png")
    plots.confusion(metrics.confusion_matrix, labels, name, staging / "confusion_matrix.png")
    run = {
        "config": config.as_dict(),
        "distributed": group.describe(config.batch_size, config.lr),
        "history": history.__dict__,
        "run_id": run_id,
    }
    (staging / "run.json").write_text(json.dumps(run, indent=1) + "\n")


def card_maker(
    recipe: Recipe,
    config: TrainConfig,
    dataset: data.Dataset,
    splits: Splits,
    net: nn.Module,
    history: History,
    exported: Staged,
    metrics: TestMetrics,
    wall_time: float,
    group: Group = SINGLE,
) -> Callable[[int], ModelCard]:
    """``model.json`` for the version the candidate gets when it is published."""
    baseline = (
        evaluate.feature_baselines(splits.x_train, dataset.feature_names)
        if dataset.feature_names
        else []
    )
    typical = explain_baseline(splits.x_train, recipe.input)  # what explanations occlude with
    provenance = trained_provenance(
        dataset,
        (len(splits.y_train), len(splits.y_val), len(dataset.y_test)),
        dataset.split,
        config,
        net,
        splits.feedback or 0,
        (history.epochs_run, history.best_epoch),
        wall_time,
        group,
    )

    def card(version: int) -> ModelCard:
        return ModelCard(
            name=recipe.name,
            version=version,
            kind="gru" if recipe.kind == "lstm" and config.cell == "gru" else recipe.kind,
            task="classification",
            description=recipe.description,
            inputs=[recipe.input],
            outputs=export.output_specs(len(dataset.labels)),
            labels=dataset.labels,
            feature_names=dataset.feature_names,
            provenance=provenance,
            baseline=baseline,
            metrics=metrics,
            onnx_sha256=exported.sha256,
            parity=exported.parity,
            reference=exported.reference,
            explain_baseline=typical,
        )

    return card


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
    m, history = candidate.metrics, candidate.history
    assert result.card.parity is not None
    print(
        f"{candidate.recipe.name}: published version {version} at {folder}: test accuracy "
        f"{m.accuracy:.4f} (n={m.n}), loss {m.loss:.4f}, "
        f"parity {result.card.parity.max_abs_diff:.2e}, "
        f"{history.epochs_run} epochs in {history.wall_time_s:.1f}s",
        flush=True,
    )
    return result


def run(
    recipe: Recipe,
    config: TrainConfig,
    repository: Path,
    group: Group = SINGLE,
    checkpoints: Path | None = None,
) -> Result | None:
    """Train, export, check and publish one new version of ``recipe``.

    In a torchrun ``group`` every process trains; rank 0 alone exports, checks parity,
    evaluates and publishes, and only once every process is still there after training (a
    process lost before that point fails the run and nothing is published); the others
    return None. With ``checkpoints`` the run keeps its run folder in
    ``checkpoints/<model>`` (``training/checkpoint.py``): it resumes from the last epoch
    there, and once it has published, running it again publishes nothing."""
    config.validate()
    group.local_batch(config.batch_size, config.micro_batches)  # fails now, not after loading
    folder, done = open_run(checkpoints, recipe.name, group, config.as_dict(), repository)
    if done is not None:
        return None
    dataset = load_dataset(recipe, config)
    trained = train_model(recipe, config, dataset, group=group, folder=folder)
    return publish_from_rank_zero(recipe, config, dataset, trained, repository, folder)


def publish_from_rank_zero(
    recipe: Recipe,
    config: TrainConfig,
    dataset: data.Dataset,
    trained: Trained,
    repository: Path,
    folder: RunFolder | None,
) -> Result | None:
    """Rank 0 packages the trained network and, at the commit point, publishes it and
    records it in the run folder (``distributed.publish_from_rank_zero``)."""

    def publish(candidate: Candidate) -> Result:
        result = publish_candidate(candidate, repository)
        if folder is not None:
            folder.mark_published(result.version, repository)
        return result

    return distributed.publish_from_rank_zero(
        trained.group,
        recipe.name,
        lambda: package(recipe, config, dataset, trained),
        publish,
        Candidate.discard,
    )


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
