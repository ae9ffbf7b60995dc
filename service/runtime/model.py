"""One loaded model version: its card, its onnxruntime session, and the load-time checks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from modelrepo import (
    CARD_FILE,
    MODEL_FILE,
    ModelCard,
    TensorSpec,
    file_sha256,
    graph,
    read_card,
)
from service.errors import LoadError
from service.runtime.checks import InputCheck

log = logging.getLogger("nnserve.model")


@dataclass(frozen=True, eq=False)
class ServedModel:
    """A version that passed every load check: its card and session, and what requests need
    from them, computed once. Immutable and thread-safe to run. What a version acquires while
    it serves (batcher, metrics, leases) is the registry's record of it, not the model's."""

    card: ModelCard
    session: ort.InferenceSession
    folder: Path
    name: str
    version: int
    input: TensorSpec
    check: InputCheck
    output_names: list[str]
    #: The output whose argmax is the predicted class (classifiers only).
    probabilities_index: int | None
    #: v1 tabular rows may be objects keyed by feature name.
    takes_feature_objects: bool
    #: Seconds per sample, measured on the reference batch at load time (0 without it).
    seconds_per_sample: float
    #: The load's wall time, checks included.
    load_seconds: float

    @classmethod
    def of(
        cls,
        card: ModelCard,
        session: ort.InferenceSession,
        folder: Path,
        seconds_per_sample: float = 0.0,
        load_seconds: float = 0.0,
    ) -> ServedModel:
        spec = card.inputs[0]
        outputs = [o.name for o in card.outputs]
        return cls(
            card=card,
            session=session,
            folder=folder,
            name=card.name,
            version=card.version,
            input=spec,
            check=InputCheck(spec),
            output_names=outputs,
            probabilities_index=(
                outputs.index("probabilities")
                if card.labels and "probabilities" in outputs
                else None
            ),
            takes_feature_objects=bool(card.feature_names)
            and spec.shape[1:] == [len(card.feature_names)],
            seconds_per_sample=seconds_per_sample,
            load_seconds=load_seconds,
        )

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        threads: int = 1,
        self_check: bool = True,
        bare: Literal["serve", "refuse"] = "refuse",
    ) -> ServedModel:
        """Read, verify and self-check ``folder``; raises :class:`LoadError` with a reason.
        A folder with ``model.onnx`` and no ``model.json`` is served with a card derived from
        the graph if ``bare`` says so (no self-check: a smoke run only), else refused."""
        started = time.perf_counter()
        if not (folder / CARD_FILE).exists():
            return cls._load_bare(folder, threads, bare, started)
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
        # onnxruntime read the file again: a push that replaced it since the check (a copy in
        # place, mid-load) would be served under a card whose sha256 it does not have
        try:
            reread = file_sha256(model_path)
        except OSError as exc:
            raise LoadError("io_error", f"{model_path}: {exc}") from exc
        if reread != digest:
            raise LoadError(
                "sha256_mismatch",
                f"{model_path} changed while it was being loaded (sha256 {digest} when "
                f"checked, {reread} after); tried again once its files change",
            )
        declared = ([t.name for t in card.inputs], [t.name for t in card.outputs])
        actual = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
        if declared != actual:
            raise LoadError(
                "schema_mismatch", f"model.json declares {declared}, the graph has {actual}"
            )
        per_sample = check_reference(card, session) if self_check else 0.0
        return cls.of(card, session, folder, per_sample, time.perf_counter() - started)

    @classmethod
    def _load_bare(
        cls, folder: Path, threads: int, bare: Literal["serve", "refuse"], started: float
    ) -> ServedModel:
        if bare != "serve":
            raise LoadError(
                "no_card",
                f"{folder} has {MODEL_FILE} but no {CARD_FILE}: import it with `python -m "
                "modelrepo import` (card and self-check), or set NNSERVE_BARE_MODELS=serve",
            )
        model_path = folder / MODEL_FILE
        try:
            digest = file_sha256(model_path)
            session = graph.session(str(model_path), threads)
        except Exception as exc:
            raise LoadError("session_error", f"{model_path}: {exc}") from exc
        try:
            inputs, outputs = graph.specs(session)
            session.run(None, {inputs[0].name: graph.generated_inputs(inputs[0], 2)})
        except Exception as exc:  # GraphError, or the smoke run failed
            raise LoadError("unservable_graph", f"{model_path}: {exc}") from exc
        card = ModelCard(
            name=folder.parent.name,
            version=int(folder.name),
            kind="custom",
            task="regression",  # no labels known: outputs are returned as they are
            description=f"derived from a bare {MODEL_FILE}: no card, no self-check",
            inputs=inputs,
            outputs=outputs,
            provenance=graph.provenance("derived"),
            onnx_sha256=digest,
        )
        log.warning(
            "serving %s version %s from a bare %s: card derived from the graph, no self-check "
            "(python -m modelrepo import writes a card with one)",
            card.name,
            card.version,
            MODEL_FILE,
            extra={"model": card.name, "version": card.version},
        )
        return cls.of(card, session, folder, 0.0, time.perf_counter() - started)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output for one batch (called in a worker thread; onnxruntime frees the GIL)."""
        outputs: list[np.ndarray] = self.session.run(self.output_names, {self.input.name: batch})
        return outputs


def check_reference(card: ModelCard, session: ort.InferenceSession) -> float:
    """Replay the reference batch from model.json; the outputs must reproduce. Returns the
    seconds per sample it took."""
    started, samples = time.perf_counter(), 0
    for number, case in enumerate(card.reference):
        samples += case.inputs[0].shape[0]
        feeds = {t.name: np.asarray(t.data, dtype=np.float32).reshape(t.shape) for t in case.inputs}
        try:
            got = session.run([t.name for t in case.outputs], feeds)
        except Exception as exc:
            raise LoadError(
                "reference_mismatch", f"reference case {number} fails to run: {exc}"
            ) from exc
        for tensor, value in zip(case.outputs, got, strict=True):
            want = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
            error = float(np.abs(value - want).max()) if value.shape == want.shape else np.inf
            if not error <= card.reference_atol:
                raise LoadError(
                    "reference_mismatch",
                    f"reference case {number}, output {tensor.name!r}: max "
                    f"error {error:.3g} > {card.reference_atol}",
                )
    return (time.perf_counter() - started) / max(samples, 1)
