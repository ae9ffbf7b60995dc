"""``python -m training quantize <model>``: publish an int8 variant of a published version.

Static QDQ quantization with onnxruntime (int8 weights per output channel, uint8
activations, ranges calibrated on samples of the training split), published as a model of its
own (``<model>-int8``) with a full card, and only if its test accuracy is at most
``max_drop`` below the source's on the same test split (the gate); otherwise nothing is
published and the command says why.

Left in float: a convolution over fewer than :data:`MIN_INT8_CHANNELS` input channels (the
CNN's first, on raw pixels): measured on one core, its int8 kernel (im2col over one channel)
took 22 µs where the float NCHWc one took 6 µs; and the Softmax, so that probabilities keep
float precision (quantized, they came in steps of 1/255 of the calibrated range, and a
QLinearSoftmax with its Q/DQ pair cost more than the float Softmax over ten values).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from modelrepo import (
    MODEL_FILE,
    ModelCard,
    Quantization,
    Speed,
    file_sha256,
    graph,
    publish,
    read_card,
    scan,
    version_dir,
)
from training import data, evaluate, export, plots
from training.errors import TrainingError
from training.pipeline import load_dataset
from training.recipes import RECIPES, Recipe

# -- settings ------------------------------------------------------------------------------
MAX_DROP = 0.005  # the gate: test accuracy may drop by at most 0.5 point
CALIBRATION_SAMPLES = 512  # training-split samples the activation ranges are calibrated on
CALIBRATION_BATCH = 64
MIN_INT8_CHANNELS = 4  # convolutions over fewer input channels stay float (see above)
SPEED_SECONDS = 2.0  # per measurement of raw onnxruntime speed (one thread)
SPEED_BATCHES = (1, 32)
METHOD = (
    "static QDQ: int8 weights per output channel, uint8 activations (min-max calibration), "
    "softmax in float"
)


class GateFailed(TrainingError):
    """The quantized graph lost more accuracy than the gate allows: nothing was published."""


@dataclass
class Outcome:
    version: int
    folder: Path
    card: ModelCard


class _Calibration(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, name: str, x: np.ndarray) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [x[i : i + CALIBRATION_BATCH] for i in range(0, len(x), CALIBRATION_BATCH)]
        )
        self._name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}


def calibration_samples(dataset: data.Dataset, n: int, seed: int) -> np.ndarray:
    """``n`` training-split samples (stratified, seeded): the test split stays untouched."""
    if isinstance(dataset.x_train, list):
        raise TrainingError("quantize takes fixed-shape inputs (not variable-length sequences)")
    keep = data.subsample(dataset.y_train, min(n, len(dataset.y_train)), seed)
    return np.ascontiguousarray(dataset.x_train[keep], dtype=np.float32)


def float_nodes(model: onnx.ModelProto) -> list[str]:
    """The nodes left in float: low-channel convolutions and every Softmax (see above)."""
    softmax = [n.name for n in model.graph.node if n.op_type == "Softmax"]
    return low_channel_convs(model) + softmax


def low_channel_convs(model: onnx.ModelProto) -> list[str]:
    """Conv nodes whose weight has fewer than :data:`MIN_INT8_CHANNELS` input channels."""
    weights = {w.name: list(w.dims) for w in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv"
        and len(node.input) > 1
        and len(weights.get(node.input[1], [0, MIN_INT8_CHANNELS])) == 4
        and weights[node.input[1]][1] < MIN_INT8_CHANNELS
    ]


def quantize_graph(
    source: Path, target: Path, input_name: str, calibration: np.ndarray
) -> list[str]:
    """Write the int8 graph of ``source`` to ``target``; returns the nodes left in float."""
    with tempfile.TemporaryDirectory(prefix="nnserve-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))  # shapes inferred, graph optimized
        excluded = float_nodes(onnx.load(str(prepared)))
        quantize_static(
            str(prepared),
            str(target),
            _Calibration(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
        )
    onnx.checker.check_model(str(target), full_check=True)
    return excluded


def samples_per_s(
    session: ort.InferenceSession, x: np.ndarray, batch: int, seconds: float, repeats: int = 5
) -> float:
    """Raw onnxruntime throughput on repeated runs of one batch: the best of ``repeats``
    slices of ``seconds`` (the least disturbed by anything else on the machine)."""
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x[:batch])}
    for _ in range(10):
        session.run(None, feed)
    best = 0.0
    for _ in range(repeats):
        runs, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds / repeats:
            session.run(None, feed)
            runs += 1
        best = max(best, runs * batch / elapsed)
    return round(best, 1)


def gate(source_accuracy: float, accuracy: float, max_drop: float) -> None:
    """Raises :class:`GateFailed` when the drop exceeds ``max_drop``."""
    drop = source_accuracy - accuracy
    if drop > max_drop + 1e-12:
        raise GateFailed(
            f"int8 test accuracy {accuracy:.4f} is {drop * 100:.2f} points below the source's "
            f"{source_accuracy:.4f} (at most {max_drop * 100:.2f} allowed): nothing published"
        )


def quantize(
    recipe: Recipe,
    repository: Path,
    *,
    version: int | None = None,
    max_drop: float = MAX_DROP,
    calibration: int = CALIBRATION_SAMPLES,
    quick: bool = False,
    speed_seconds: float = SPEED_SECONDS,
    seed: int = 0,
) -> Outcome:
    """Quantize ``recipe``'s newest (or ``version``) published version and publish the
    result as the next version of ``<name>-int8``, if it passes the gate."""
    versions = scan(repository).get(recipe.name, [])
    number = version or (versions[-1] if versions else None)
    if number is None or number not in versions:
        raise TrainingError(f"no published version {number or ''} of {recipe.name} in {repository}")
    folder = version_dir(repository, recipe.name, number)
    card = read_card(folder)
    source_path = folder / MODEL_FILE
    if card.metrics is None or not card.labels:
        raise TrainingError(f"{recipe.name}/{number} has no test metrics: nothing to gate on")
    dataset = load_dataset(recipe, recipe.defaults.replace(quick=quick))
    trained_on = card.provenance.dataset
    if not quick and trained_on and trained_on.fingerprint != dataset.fingerprint():
        raise TrainingError(
            f"{recipe.name}/{number} was trained on another version of {dataset.name} "
            "(fingerprint differs): its test figures would not compare"
        )
    if isinstance(dataset.x_test, list):
        raise TrainingError("quantize takes fixed-shape inputs (not variable-length sequences)")
    spec = card.inputs[0]
    x_cal = calibration_samples(dataset, calibration, seed)
    staging = Path(tempfile.mkdtemp(prefix=f"nnserve-quantize-{recipe.name}-"))
    try:
        target = staging / MODEL_FILE
        excluded = quantize_graph(source_path, target, spec.name, x_cal)
        quantized, source = graph.session(str(target)), graph.session(str(source_path))
        x_test = np.ascontiguousarray(dataset.x_test, dtype=np.float32)
        ours, theirs = export.run(quantized, x_test), export.run(source, x_test)
        metrics = evaluate.test_metrics(ours["logits"], dataset.y_test, dataset.labels)
        source_metrics = evaluate.test_metrics(theirs["logits"], dataset.y_test, dataset.labels)
        gate(source_metrics.accuracy, metrics.accuracy, max_drop)
        name = f"{recipe.name}-int8"
        speed = [
            Speed(model=label, batch=b, samples_per_s=samples_per_s(s, x_test, b, speed_seconds))
            for b in SPEED_BATCHES
            for label, s in ((f"{recipe.name}/{number}", source), (name, quantized))
        ]
        plots.confusion(
            metrics.confusion_matrix, dataset.labels, name, staging / "confusion_matrix.png"
        )
        figures = Quantization(
            source=f"{recipe.name}/{number}",
            source_sha256=card.onnx_sha256,
            method=METHOD,
            calibration_samples=len(x_cal),
            calibration_split=f"training split of {dataset.name} (stratified, seed {seed})",
            excluded_nodes=excluded,
            source_accuracy=source_metrics.accuracy,
            accuracy=metrics.accuracy,
            max_accuracy_drop=max_drop,
            max_abs_diff=float(np.abs(ours["probabilities"] - theirs["probabilities"]).max()),
            top1_agreement=float(
                np.mean(ours["logits"].argmax(axis=1) == theirs["logits"].argmax(axis=1))
            ),
            parity_samples=len(x_test),
            speed=speed,
            measured_on=f"{platform.machine()} {platform.processor() or ''} onnxruntime "
            f"{ort.__version__}, 1 intra-op thread".replace("  ", " "),
        )
        sha256 = file_sha256(target)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        reference = graph.reference(quantized, spec, [x_test[:4]])

        def make_card(new_version: int) -> ModelCard:
            return ModelCard.model_validate(
                {
                    **dict(card),
                    "name": name,
                    "version": new_version,
                    "description": f"{card.description} (int8: {METHOD})",
                    "metrics": metrics,
                    # the weights' history (dataset, training run) is the source's
                    "provenance": card.provenance.model_copy(
                        update={
                            "origin": "quantized",
                            "onnx_version": onnx.__version__,
                            "onnxruntime_version": ort.__version__,
                            "created_at": now,
                            "command": " ".join(["python -m training", *sys.argv[1:]]),
                        }
                    ),
                    "onnx_sha256": sha256,
                    "parity": None,
                    "reference": reference,
                    # int8 kernels differ between CPU generations (VNNI or not) in the last
                    # bits: the self-check allows for it
                    "reference_atol": 1e-3,
                    "quantization": figures,
                }
            )

        make_card(1)  # every field valid before anything is written
        version_number, published = publish(
            repository, name, lambda tmp: _copy(staging, tmp), make_card
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(
        f"{name}: published version {version_number} at {published}: test accuracy "
        f"{metrics.accuracy:.4f} vs {source_metrics.accuracy:.4f} for {recipe.name}/{number}; "
        + ", ".join(f"{s.model} b{s.batch} {s.samples_per_s:,.0f}/s" for s in speed),
        flush=True,
    )
    return Outcome(version_number, published, read_card(published))


def _copy(source: Path, target: Path) -> None:
    for path in source.iterdir():
        shutil.copy2(path, target / path.name)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``python -m training quantize`` arguments (``training.cli`` hands them over)."""
    parser = argparse.ArgumentParser(
        prog="python -m training quantize",
        description="Quantize a published version to int8 (static QDQ, calibrated on the "
        "training split) and publish it as <model>-int8 if its test accuracy drops by at "
        "most --max-drop; its card holds both accuracies, parity and speed.",
    )
    parser.add_argument("model", choices=list(RECIPES))
    parser.add_argument("--repository", type=Path, default=Path("models"))
    parser.add_argument("--version", type=int, help="the source version (default: newest)")
    parser.add_argument(
        "--max-drop",
        type=float,
        default=MAX_DROP,
        help=f"largest test-accuracy drop accepted (default {MAX_DROP})",
    )
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=CALIBRATION_SAMPLES,
        help=f"training-split samples to calibrate on (default {CALIBRATION_SAMPLES})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a subset of each split (smoke runs, tests)"
    )
    parser.add_argument(
        "--speed-seconds",
        type=float,
        default=SPEED_SECONDS,
        help=f"seconds per speed measurement (default {SPEED_SECONDS})",
    )
    args = parser.parse_args(argv)
    if args.max_drop < 0 or args.calibration_samples < 1 or args.speed_seconds <= 0:
        parser.error("--max-drop >= 0, --calibration-samples >= 1, --speed-seconds > 0")
    args.command = "quantize"
    return args


def command(args: argparse.Namespace) -> None:
    quantize(
        RECIPES[args.model],
        args.repository,
        version=args.version,
        max_drop=args.max_drop,
        calibration=args.calibration_samples,
        quick=args.quick,
        speed_seconds=args.speed_seconds,
    )
