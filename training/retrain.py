"""Champion/challenger retraining on the base data plus labelled feedback.

    python -m training retrain <model> [--feedback STORE_URL] [--tolerance T] [options]

The challenger trains on the base training split plus every prediction that has a feedback
label in the store. Champion (the newest published version) and challenger are evaluated on
the same held-out data, the official test split, with raw inputs through onnxruntime. The
challenger is published as the next version only if its accuracy is not worse than the
champion's by more than the tolerance. A JSON and a Markdown report are written either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from modelrepo import MODEL_FILE, ModelCard, TestMetrics, read_card, scan
from predictionlog import open_store, redacted
from training import evaluate, export
from training.config import TrainConfig
from training.errors import TrainingError
from training.pipeline import build_candidate, load_dataset, publish_candidate
from training.recipes import Recipe, Samples


@dataclass
class Decision:
    published: bool
    version: int  # the published version, or the champion kept
    report: Path


def feedback_examples(
    url: str, recipe: Recipe, labels: list[str], held_out: Samples
) -> tuple[Samples, np.ndarray, int]:
    """(inputs, class indices, skipped) of every logged prediction with a feedback label.

    Examples whose label is unknown, whose shape does not fit, or that are samples of the
    held-out set (which must stay unseen to judge the challenger) are skipped."""
    unseen = {np.asarray(x, dtype=np.float32).tobytes() for x in held_out}
    store = open_store(url)
    try:
        pairs = store.labelled(recipe.name)
    finally:
        store.close()
    index = {label: i for i, label in enumerate(labels)}
    shape = recipe.input.shape[1:]
    inputs, targets, skipped = [], [], 0
    for prediction, label in pairs:
        x = np.asarray(prediction.inputs, dtype=np.float32)
        fits = x.ndim == len(shape) and all(
            w in (-1, g) for w, g in zip(shape, x.shape, strict=True)
        )
        if label not in index or not fits or x.tobytes() in unseen:
            skipped += 1
            continue
        inputs.append(x)
        targets.append(index[label])
    y = np.asarray(targets, dtype=np.int64)
    if -1 in shape:  # variable-length sequences stay a list
        return inputs, y, skipped
    return (np.stack(inputs) if inputs else np.empty((0, *shape), np.float32)), y, skipped


def champion_metrics(
    repository: Path, recipe: Recipe, x_test: Samples, y_test: np.ndarray, labels: list[str]
) -> tuple[ModelCard, TestMetrics]:
    versions = scan(repository).get(recipe.name)
    if not versions:
        raise TrainingError(
            f"no published version of {recipe.name} in {repository} to "
            "challenge; train one first: python -m training " + recipe.name
        )
    folder = repository / recipe.name / str(versions[-1])
    card = read_card(folder)
    logits = export.run(export.session(folder / MODEL_FILE), x_test)["logits"]
    return card, evaluate.test_metrics(logits, y_test, labels)


def retrain(
    recipe: Recipe,
    config: TrainConfig,
    repository: Path,
    feedback_url: str | None,
    tolerance: float,
    report_dir: Path,
) -> Decision:
    if not 0 <= tolerance < 1:
        raise TrainingError(f"tolerance must be in [0, 1), got {tolerance}")
    dataset = load_dataset(recipe, config)
    champion_card, champion = champion_metrics(
        repository, recipe, dataset.x_test, dataset.y_test, dataset.labels
    )
    extra, skipped = None, 0
    if feedback_url:
        x_fb, y_fb, skipped = feedback_examples(
            feedback_url, recipe, dataset.labels, dataset.x_test
        )
        extra = (x_fb, y_fb)
    candidate = build_candidate(recipe, config, dataset, extra)
    challenger = candidate.metrics
    accept = challenger.accuracy >= champion.accuracy - tolerance
    if accept:
        version = publish_candidate(candidate, repository).version
    else:
        candidate.discard()
        version = champion_card.version
    return report_decision(
        Outcome(recipe.name, accept, version, tolerance, "accuracy"),
        "publish if challenger accuracy >= champion accuracy - tolerance",
        f"{dataset.name} test split, n={len(dataset.y_test)}",
        (feedback_url, 0 if extra is None else len(extra[1]), skipped),
        {"version": champion_card.version, "accuracy": champion.accuracy, "loss": champion.loss},
        {
            "accuracy": challenger.accuracy,
            "loss": challenger.loss,
            "epochs_run": candidate.history.epochs_run,
            "config": config.as_dict(),
        },
        report_dir,
    )


@dataclass(frozen=True)
class Outcome:
    model: str
    accepted: bool
    version: int  # the published version, or the champion kept
    tolerance: float
    figure: str  # what the gate compares: accuracy, or a forecaster's MASE


def report_decision(
    outcome: Outcome,
    rule: str,
    held_out: str,
    feedback: tuple[str | None, int, int],
    champion: dict[str, Any],
    challenger: dict[str, Any],
    report_dir: Path,
) -> Decision:
    """Write the JSON and Markdown reports of a champion/challenger decision and say it.
    ``feedback``: the store's URL (None: no store), examples used, and those skipped."""
    store, examples, skipped = feedback
    report: dict[str, Any] = {
        "model": outcome.model,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "decision": "published" if outcome.accepted else "kept champion",
        "version": outcome.version,
        "tolerance": outcome.tolerance,
        "rule": rule,
        "held_out": held_out,
        "feedback": {
            "store": redacted(store) if store else None,
            "examples": examples,
            "skipped": skipped,
        },
        "champion": champion,
        "challenger": challenger,
    }
    path = write_report(report, report_dir)
    figure = outcome.figure
    print(
        f"{outcome.model}: {report['decision']} (version {outcome.version}): challenger "
        f"{figure} {challenger[figure]:.4f} vs champion {champion[figure]:.4f}, tolerance "
        f"{outcome.tolerance}; report {path}",
        flush=True,
    )
    return Decision(outcome.accepted, outcome.version, path)


def write_report(report: dict[str, Any], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    base = folder / f"retrain-{report['model']}-{stamp}"
    base.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    champion, challenger = report["champion"], report["challenger"]
    figures = [k for k in champion if k != "version"]  # accuracy, loss; a forecaster's MASE...
    published = report["version"] if report["decision"] == "published" else "-"
    base.with_suffix(".md").write_text(
        f"# Retraining {report['model']}: {report['decision']}\n\n"
        f"{report['time']} · held-out data: {report['held_out']} · tolerance "
        f"{report['tolerance']} ({report['rule']})\n\n"
        f"| model | version | {' | '.join(f'test {k}' for k in figures)} |\n"
        f"|---|---|{'---|' * len(figures)}\n"
        f"| champion | {champion['version']} | "
        f"{' | '.join(f'{champion[k]:.4f}' for k in figures)} |\n"
        f"| challenger | {published} | "
        f"{' | '.join(f'{challenger[k]:.4f}' for k in figures)} |\n\n"
        f"Feedback examples used: {report['feedback']['examples']}"
        f" (skipped {report['feedback']['skipped']}).\n\n"
        f"**Decision: {report['decision']}** (version {report['version']}).\n"
    )
    return base.with_suffix(".json")
