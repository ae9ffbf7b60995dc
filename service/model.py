"""One loaded model version: its card, its onnxruntime session, and the load-time checks."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from modelrepo import MODEL_FILE, ModelCard, file_sha256, read_card
from service.errors import LoadError
from service.metrics import VersionMetrics
from service.tensors import InputCheck

if TYPE_CHECKING:
    from service.batcher import Batcher

log = logging.getLogger("nnserve.model")


class ServedModel:
    """A version that passed every load check. Immutable once built; thread-safe to run."""

    def __init__(self, card: ModelCard, session: ort.InferenceSession, folder: Path) -> None:
        self.card = card
        self.name = card.name
        self.version = card.version
        self.folder = folder
        self.session = session
        self.input = card.inputs[0]
        self.check = InputCheck(self.input)
        #: v1 tabular rows may be objects keyed by feature name
        self.takes_feature_objects = bool(card.feature_names) and self.input.shape[1:] == [
            len(card.feature_names)
        ]
        self.output_names = [o.name for o in card.outputs]
        #: The output whose argmax is the predicted class (classifiers only).
        self.probabilities_index = (
            self.output_names.index("probabilities")
            if card.labels and "probabilities" in self.output_names
            else None
        )
        self.load_seconds = 0.0
        self.metrics: VersionMetrics | None = None
        self.batcher: Batcher | None = None  # set when it starts serving
        self.seconds_per_sample = 0.0  # measured on the reference batch at load time
        self.leases = 0  # requests that resolved this version and have not finished

    @classmethod
    def load(cls, folder: Path, *, threads: int = 1, self_check: bool = True) -> ServedModel:
        """Read, verify and self-check ``folder``; raises :class:`LoadError` with a reason."""
        started = time.perf_counter()
        try:
            card = read_card(folder)
        except (OSError, ValidationError, ValueError) as exc:
            raise LoadError("invalid_card", f"{folder}/model.json: {exc}") from exc
        if (card.name, str(card.version)) != (folder.parent.name, folder.name):
            raise LoadError(
                "invalid_card",
                f"{folder}/model.json names {card.name}/{card.version}, not its own folder",
            )
        if len(card.inputs) != 1:
            raise LoadError("invalid_card", f"{folder}: exactly one input is supported")
        model_path = folder / MODEL_FILE
        try:
            digest = file_sha256(model_path)
        except OSError as exc:
            raise LoadError("io_error", f"{model_path}: {exc}") from exc
        if digest != card.onnx_sha256:
            raise LoadError(
                "sha256_mismatch",
                f"{model_path} has sha256 {digest}, model.json says {card.onnx_sha256}",
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(
                str(model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped failures
            raise LoadError("session_error", f"{model_path}: {exc}") from exc
        declared = ([t.name for t in card.inputs], [t.name for t in card.outputs])
        actual = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if declared != actual:
            raise LoadError(
                "schema_mismatch", f"model.json declares {declared}, the graph has {actual}"
            )
        served = cls(card, session, folder)
        if self_check:
            served.check_reference()
        served.load_seconds = time.perf_counter() - started
        return served

    def check_reference(self) -> None:
        """Replay the reference batch from model.json; the outputs must reproduce."""
        started, samples = time.perf_counter(), 0
        for number, case in enumerate(self.card.reference):
            samples += case.inputs[0].shape[0]
            feeds = {
                t.name: np.asarray(t.data, dtype=np.float32).reshape(t.shape) for t in case.inputs
            }
            try:
                got = self.session.run([t.name for t in case.outputs], feeds)
            except Exception as exc:
                raise LoadError(
                    "reference_mismatch", f"reference case {number} fails to run: {exc}"
                ) from exc
            for tensor, value in zip(case.outputs, got, strict=True):
                want = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
                error = float(np.abs(value - want).max()) if value.shape == want.shape else np.inf
                if not error <= self.card.reference_atol:
                    raise LoadError(
                        "reference_mismatch",
                        f"reference case {number}, output {tensor.name!r}: max "
                        f"error {error:.3g} > {self.card.reference_atol}",
                    )
        self.seconds_per_sample = (time.perf_counter() - started) / max(samples, 1)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output for one batch (called in a worker thread; onnxruntime frees the GIL)."""
        outputs: list[np.ndarray] = self.session.run(self.output_names, {self.input.name: batch})
        return outputs
