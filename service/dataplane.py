"""The data plane: the one module every edge calls (HTTP today; gRPC next).

It resolves and leases a model version, admits a request's batch to that version's batcher
under the request's deadline, logs the predictions, explains them (in a queue of their own),
records feedback, and answers the repository calls. It takes a :class:`RequestContext` and
decoded arrays, returns arrays and plain values, and raises domain errors: no transport, no
wire format, no status codes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelrepo import is_valid_name
from predictionlog import Batch, Feedback, FeedbackConflict, Prediction, PredictionLog, Store
from predictionlog import UnknownPrediction as NotInStore
from service.context import RequestContext
from service.errors import Conflict, InvalidInput, ModelNotFound, ModelNotReady, UnknownPrediction
from service.observability import tracing
from service.repository.registry import Registry, ServedVersion, VersionState
from service.runtime.batcher import Result
from service.runtime.explain import Explained, ExplainQueue
from service.runtime.model import ServedModel


@dataclass(frozen=True)
class PredictionRecorder:
    """The batchers' run hook: each onnxruntime run's predictions go to the log writer as
    one message (one ``send``; never blocks), before any of its requests is answered. With
    tracing on, each row carries its request's trace id, and the hand-over is a
    ``prediction-log write`` span under the run's."""

    log: PredictionLog

    def __call__(
        self,
        model: ServedModel,
        inputs: np.ndarray,
        outputs: list[np.ndarray],
        ids: list[str],
        trace: tracing.RunTrace | None = None,
    ) -> bool:
        if not self.log.sampled():
            return False
        index = model.probabilities_index
        scores = outputs[index if index is not None else -1]
        labels = model.card.labels
        names: list[str | None] = (
            [labels[i] for i in scores.argmax(axis=1).tolist()] if labels else [None] * len(ids)
        )
        batch = Batch(
            model.name,
            model.version,
            time.time(),
            ids,
            inputs,
            scores,
            names,
            None if trace is None else trace.trace_ids,
        )
        if trace is None or trace.span is None:  # untraced, or no request of the run sampled
            return self.log.record(batch)
        span = tracing.child(trace.span, "prediction-log write", {"nnserve.rows": len(ids)})
        try:
            logged = self.log.record(batch)
            span.set_attribute("nnserve.prediction_log.logged", logged)
            return logged
        finally:
            span.end()


#: How long feedback waits for a prediction id it cannot find yet. This process's own rows
#: are flushed before the look-up; another worker's are in the writer already (flushed too),
#: or gathered in that worker for at most 5 ms more (``predictionlog.client.GATHER_S``), or,
#: while the writer restarts, in its backlog, sent within 0.2 s of the writer being back;
#: another replica's writer reads its sockets every 50 ms at most and commits within its
#: linger window (20 ms).
JOIN_WAIT_S = 2.0


@dataclass
class DataPlane:
    registry: Registry
    log: PredictionLog | None = None
    store: Store | None = None
    #: The prediction log's retention bounds, in words (for "unknown prediction" answers).
    retention: str = ""
    #: Explanations' own threads, queue and cap (``service.runtime.explain``).
    explainer: ExplainQueue | None = None

    # -- look-ups ----------------------------------------------------------------------------
    def model(self, name: str, version: str | None = None) -> ServedModel:
        """The served model asked for (newest version when none is named)."""
        return self.registry.get(name, version).model

    def lease(self, name: str, version: str | None = None) -> ServedVersion:
        """``with plane.lease(name, version) as served:`` the version a request works on; a
        swap meanwhile lets it finish there (the lease ends with the block)."""
        return self.registry.get(name, version)

    def newest(self, name: str) -> ServedModel | None:
        """The newest version of ``name`` serving (None when none is)."""
        return self.registry.newest(name)

    def versions(self, name: str) -> list[int]:
        return sorted(self.registry.served.get(name, {}))

    def models(self) -> list[str]:
        return sorted(self.registry.served)

    def ready(self) -> bool:
        return self.registry.ready()

    def waiting(self) -> list[str]:
        """Models in the repository with no version serving (why the server is not ready)."""
        return sorted(n for n in self.registry.expected if not self.registry.served.get(n))

    # -- inference ---------------------------------------------------------------------------
    async def infer(
        self, ctx: RequestContext, served: ServedVersion, batch: np.ndarray, ids: list[str]
    ) -> Result:
        """Every output for ``batch`` (one row per id), run in some batch before the request's
        deadline, and whether the predictions went to the prediction log under ``ids``."""
        return await served.batcher.submit(batch, ctx.deadline, ids, ctx.trace)

    # -- explanations ------------------------------------------------------------------------
    async def explain(
        self,
        ctx: RequestContext,
        served: ServedVersion,
        batches: list[np.ndarray],
        patch: int | None = None,
    ) -> Explained:
        """Occlusion explanations of ``batches`` (one input shape each) in the explainers' own
        threads and queue, under the request's deadline; observed in its own histogram."""
        if self.explainer is None:
            raise ModelNotReady("explanations are off in this service")
        started = time.perf_counter()
        explained = await self.explainer.explain(served.model, batches, patch, ctx.deadline)
        if served.metrics.explain is not None:
            served.metrics.explain.observe(time.perf_counter() - started)
        return explained

    # -- feedback ----------------------------------------------------------------------------
    async def feedback(self, model: str, pairs: list[tuple[str, str]]) -> dict[str, int]:
        """Ground truth for logged predictions: every item's id, model and label is checked
        before any is stored. Store I/O runs in a worker thread."""
        if self.log is None or self.store is None:
            raise ModelNotReady("feedback needs the prediction log (NNSERVE_PREDICTION_LOG=true)")
        if model not in self.registry.found and model not in self.registry.served:
            raise ModelNotFound(f"unknown model {model!r}")
        return await asyncio.to_thread(self._record_feedback, self.log, self.store, model, pairs)

    def _record_feedback(
        self, log: PredictionLog, store: Store, model: str, pairs: list[tuple[str, str]]
    ) -> dict[str, int]:
        log.flush(timeout=10.0)  # the predictions being labelled may still be queued
        newest = self.registry.newest(model)
        labels = newest.card.labels if newest is not None else []
        if newest is not None and newest.card.forecast is not None:
            raise InvalidInput(
                f"{model} is a forecaster: its feedback is the actual values, "
                '{"id": ..., "actuals": [...], "start": k}, not a label'
            )
        checked = []
        deadline = time.monotonic() + JOIN_WAIT_S
        for number, (prediction_id, label) in enumerate(pairs):
            prediction = self._logged(log, store, model, number, prediction_id, deadline)
            if labels and label not in labels:
                raise InvalidInput(
                    f"feedback {number}: unknown label {label!r}; expected one of {labels}"
                )
            checked.append((prediction, label))
        recorded = duplicates = 0
        for prediction, label in checked:
            try:
                new = store.record_feedback(Feedback(prediction.id, label, time.time()))
            except FeedbackConflict as exc:
                raise Conflict(
                    f"prediction {prediction.id!r} already has a different label: {exc}"
                ) from None
            except NotInStore as exc:  # removed between the check and now
                raise UnknownPrediction(f"unknown prediction id {prediction.id!r}: {exc}") from None
            if new:
                recorded += 1
                outcome = "correct" if prediction.label == label else "incorrect"
                self.registry.metrics.feedback.labels(
                    prediction.model, str(prediction.version), outcome
                ).inc()
            else:
                duplicates += 1
        return {"recorded": recorded, "duplicates": duplicates}

    def _logged(
        self,
        log: PredictionLog,
        store: Store,
        model: str,
        number: int,
        prediction_id: str,
        deadline: float,
    ) -> Prediction:
        """Feedback item ``number``'s logged prediction, waiting until ``deadline`` for it."""
        prediction = store.get_prediction(prediction_id)
        while prediction is None and time.monotonic() < deadline:
            time.sleep(0.05)  # another replica's writer may still be committing it
            prediction = store.get_prediction(prediction_id)
        if prediction is None:
            raise UnknownPrediction(
                f"feedback {number}: unknown prediction id {prediction_id!r}: not logged "
                f"(sampled out, or its response said so), or already removed by the "
                f"log's retention ({self._retention_state(log)})"
            )
        if prediction.model != model:
            raise InvalidInput(
                f"feedback {number}: prediction {prediction_id!r} was made by "
                f"{prediction.model!r}, not {model!r}"
            )
        return prediction

    async def actuals(
        self, model: str, items: Sequence[tuple[str, int, Sequence[float]]]
    ) -> dict[str, int]:
        """A forecaster's feedback: actual values ``(id, start step, values)``, possibly
        fewer than the horizon and in several pieces; every item is checked before any is
        stored. The live error per step follows from the store (``Quality``)."""
        if self.log is None or self.store is None:
            raise ModelNotReady("feedback needs the prediction log (NNSERVE_PREDICTION_LOG=true)")
        if model not in self.registry.found and model not in self.registry.served:
            raise ModelNotFound(f"unknown model {model!r}")
        return await asyncio.to_thread(self._record_actuals, self.log, self.store, model, items)

    def _record_actuals(
        self,
        log: PredictionLog,
        store: Store,
        model: str,
        items: Sequence[tuple[str, int, Sequence[float]]],
    ) -> dict[str, int]:
        log.flush(timeout=10.0)  # the forecasts being completed may still be queued
        deadline = time.monotonic() + JOIN_WAIT_S
        checked = [
            (self._logged(log, store, model, number, ident, deadline), start, values)
            for number, (ident, start, values) in enumerate(items)
        ]
        for prediction, start, values in checked:
            if start + len(values) > prediction.outputs.size:
                raise InvalidInput(
                    f"prediction {prediction.id!r} forecast {prediction.outputs.size} steps; "
                    f"actuals from step {start} has {len(values)} values"
                )
        recorded = duplicates = 0
        for prediction, start, values in checked:
            try:
                new = store.record_actuals(prediction.id, start, values, time.time())
            except FeedbackConflict as exc:
                raise Conflict(f"{exc}") from None
            except NotInStore as exc:  # removed between the check and now
                raise UnknownPrediction(f"unknown prediction id {prediction.id!r}: {exc}") from None
            recorded += new
            duplicates += len(values) - new
            if new:
                self.registry.metrics.feedback.labels(
                    prediction.model, str(prediction.version), "actual"
                ).inc(new)
        return {"recorded": recorded, "duplicates": duplicates}

    def _retention_state(self, log: PredictionLog) -> str:
        figures = log.stats(timeout=1.0) or {}
        oldest = figures.get("oldest")
        kept = (
            f"; the oldest kept is from {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(oldest))}"
            if oldest is not None
            else ""
        )
        return f"it keeps {self.retention or 'everything'}{kept}"

    # -- the repository ----------------------------------------------------------------------
    async def index(self) -> list[VersionState]:
        await self.registry.sync()
        return self.registry.index()

    async def load(self, name: str) -> list[int]:
        """Load (or reload) a model per its policy; the versions now served."""
        await self.registry.load(_repository_name(name))
        return self.versions(name)

    async def unload(self, name: str) -> None:
        await self.registry.unload(_repository_name(name))


def _repository_name(name: str) -> str:
    """Names come from clients; only repository names are ever turned into paths."""
    if not is_valid_name(name):
        raise InvalidInput(f"invalid model name {name!r}: expected [a-z0-9][a-z0-9-]{{0,62}}")
    return name
