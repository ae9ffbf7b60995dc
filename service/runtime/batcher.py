"""Dynamic batching for one model version.

Requests queue their samples and a drain callback, scheduled on the event loop when the
first sample arrives, takes whatever is queued (up to ``max_batch_size`` samples) and runs it
as one onnxruntime call. The callback runs after the requests already waiting on the loop
have decoded and queued theirs, so under load batches form by themselves, and a lone request
(concurrency 1) waits for nothing. A batch that has company but room left may wait up to
``max_batch_delay`` for more. While a batch runs, new samples queue; when it finishes, the
next drain starts at once.

Batches expected to take less than ``inline_s`` (from measured run times) run on the event
loop: the thread hop would cost more than the model. Longer ones run in a worker thread
(onnxruntime frees the GIL), so the loop stays free.

Samples are batched only with samples of the same shape, so variable-length sequences run in
groups of one length: batching never changes a prediction. The queue is bounded (Overloaded
when full) and every request has a deadline (DeadlineExceeded; a sample whose deadline passes
before its batch starts is dropped from it).

With tracing on (``service.observability.tracing``), each request's wait and each run are
spans: a ``queue wait`` per request and a ``batch run`` per run, linked to every request in
it; the run hook gets the run's span and each row's trace id. Off, one check per batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from service.errors import DeadlineExceeded, Overloaded
from service.observability import tracing
from service.observability.metrics import Metrics, VersionMetrics
from service.runtime.model import ServedModel

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("nnserve.batcher")


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 32
    max_batch_delay_s: float = 0.0
    max_queue_size: int = 1024  # samples
    inline_s: float = 0.0002  # batches expected to run faster than this skip the thread hop


#: Called once per onnxruntime run, on the event loop, before any request of the run is
#: answered: (model, inputs, outputs, prediction ids, the run's trace or None when tracing
#: is off) → whether the run was recorded. The prediction log hangs here, so it costs one
#: call per batch, not one per request.
RunHook = Callable[
    [ServedModel, np.ndarray, list[np.ndarray], list[str], tracing.RunTrace | None], bool
]


class Result(NamedTuple):
    outputs: list[np.ndarray]
    recorded: bool  # the run hook recorded this request's predictions


@dataclass(eq=False)
class _Item:
    batch: np.ndarray
    ids: Sequence[str]
    future: asyncio.Future[Result]
    enqueued: float
    timer: asyncio.TimerHandle | None = field(default=None)
    trace: Span | None = field(default=None)  # the request's span (tracing on)


class Batcher:
    def __init__(
        self,
        model: ServedModel,
        config: BatchConfig,
        executor: Executor,
        metrics: VersionMetrics | None = None,
        on_run: RunHook | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.executor = executor
        self.metrics = metrics
        self.on_run = on_run
        self.loop = asyncio.get_running_loop()
        self.items: deque[_Item] = deque()
        self.queued = 0  # samples waiting
        self.running = False  # a batch is in a worker thread
        self.scheduled = False  # a drain is scheduled on the loop
        if metrics is not None:  # read at scrape time, no lock per request
            # through a weak reference: the gauge's child outlives a retired version (it is
            # never removed in multiprocess mode), and held this batcher, its session and
            # card for good: about 1 MiB per version swap, in every worker
            me = weakref.ref(self)
            metrics.queue_depth.set_function(lambda: getattr(me(), "queued", 0))
        #: Seconds per sample (moving average), to choose between the loop and a thread.
        self.per_sample_s = model.seconds_per_sample

    # -- the request side ------------------------------------------------------------------
    async def submit(
        self,
        batch: np.ndarray,
        deadline: float,
        ids: Sequence[str] = (),
        trace: Span | None = None,
    ) -> Result:
        """Outputs for ``batch`` (a request's samples, ``ids`` their prediction ids for the
        run hook, ``trace`` its span when tracing is on), computed in some batch."""
        n = len(batch)
        if self.queued + n > self.config.max_queue_size:
            raise Overloaded(
                f"model {self.model.name!r} version {self.model.version} queue is "
                f"full ({self.queued} samples waiting); retry shortly",
                retry_after_s=1,
            )
        now = time.perf_counter()
        if deadline <= now:
            raise DeadlineExceeded("the request's deadline passed before it was queued")
        item = _Item(batch, ids, self.loop.create_future(), now)
        if trace is not None:
            item.trace = trace
        item.timer = self.loop.call_later(deadline - now, self._expire, item)
        self.items.append(item)
        self.queued += n
        self._schedule()
        return await item.future

    def _expire(self, item: _Item) -> None:
        if not item.future.done():
            item.future.set_exception(
                DeadlineExceeded(
                    f"no result within the request's deadline for model {self.model.name!r}"
                )
            )

    # -- draining the queue ----------------------------------------------------------------
    def _schedule(self, delay: float = 0.0) -> None:
        if not self.scheduled and not self.running:
            self.scheduled = True
            if delay > 0:
                self.loop.call_later(delay, self._drain, True)
            else:
                self.loop.call_soon(self._drain, False)

    def _drain(self, waited: bool) -> None:
        self.scheduled = False
        if self.running:
            return  # the running batch drains again when it finishes
        taken = self._take()
        if not taken:
            return
        size = sum(len(i.batch) for i in taken)
        if (
            not waited
            and len(taken) > 1
            and size < self.config.max_batch_size
            and self.config.max_batch_delay_s > 0
        ):
            # company is arriving: give the batch max_batch_delay to fill up
            self.items.extendleft(reversed(taken))
            self.queued += size
            self._schedule(self.config.max_batch_delay_s)
            return
        groups: dict[tuple[int, ...], list[_Item]] = {}
        for item in taken:
            groups.setdefault(item.batch.shape[1:], []).append(item)
        # decided once per group, before any runs (a run updates the per-sample estimate)
        inline: list[list[_Item]] = []
        threaded: list[list[_Item]] = []
        for items in groups.values():
            (inline if self._cheap(items) else threaded).append(items)
        for items in inline:
            self._run_inline(items)
        if threaded:
            self.running = True
            self.loop.create_task(self._run_threaded(threaded))
        elif self.items:
            self._schedule()

    def _take(self) -> list[_Item]:
        """Queued items (FIFO) up to max_batch_size samples; expired ones are dropped."""
        taken: list[_Item] = []
        size = 0
        while self.items:
            item = self.items[0]
            n = len(item.batch)
            if taken and size + n > self.config.max_batch_size:
                break
            self.items.popleft()
            self.queued -= n
            if item.future.done():  # its deadline passed while queued: dropped, never run
                continue
            taken.append(item)
            size += n
        return taken

    def _cheap(self, items: list[_Item]) -> bool:
        return self.per_sample_s * sum(len(i.batch) for i in items) <= self.config.inline_s

    @staticmethod
    def _concat(items: list[_Item]) -> np.ndarray:
        return items[0].batch if len(items) == 1 else np.concatenate([i.batch for i in items])

    def _observe_queue(self, items: list[_Item]) -> None:
        children = self.metrics
        if children is not None:
            started = time.perf_counter()
            for item in items:
                children.queue.observe(started - item.enqueued)

    def _run_inline(self, items: list[_Item]) -> None:
        self._observe_queue(items)
        run = self._trace(items, True) if tracing.tracer is not None else None
        inputs = self._concat(items)
        try:
            outputs = self._infer(inputs)
        except Exception as exc:
            self._fail(items, exc, run)
        else:
            self._deliver(items, inputs, outputs, run)

    async def _run_threaded(self, groups: list[list[_Item]]) -> None:
        try:
            for items in groups:
                self._observe_queue(items)
                run = self._trace(items, False) if tracing.tracer is not None else None
                inputs = self._concat(items)
                try:
                    outputs = await self.loop.run_in_executor(self.executor, self._infer, inputs)
                except Exception as exc:
                    self._fail(items, exc, run)
                else:
                    self._deliver(items, inputs, outputs, run)
        finally:
            self.running = False
            if self.items:
                self._schedule()

    def _fail(self, items: list[_Item], exc: Exception, run: Span | None = None) -> None:
        """An onnxruntime failure: each request of the batch gets it (an internal error)."""
        log.exception(
            "inference failed for %s/%d", self.model.name, self.model.version, exc_info=exc
        )
        for item in items:
            if item.timer is not None:
                item.timer.cancel()
            if not item.future.done():
                item.future.set_exception(exc)
        if run is not None:
            tracing.failed(run, exc)
            run.end()

    def _deliver(
        self,
        items: list[_Item],
        inputs: np.ndarray,
        outputs: list[np.ndarray],
        run: Span | None = None,
    ) -> None:
        recorded = self._record(items, inputs, outputs, run)
        offset = 0
        for item in items:
            n = len(item.batch)
            if item.timer is not None:
                item.timer.cancel()
            if not item.future.done():
                item.future.set_result(Result([o[offset : offset + n] for o in outputs], recorded))
            offset += n
        if run is not None:
            run.end()

    def _record(
        self,
        items: list[_Item],
        inputs: np.ndarray,
        outputs: list[np.ndarray],
        run: Span | None = None,
    ) -> bool:
        """The run hook, for the requests still waiting (one that timed out is not recorded)."""
        if self.on_run is None:
            return False
        live = [not item.future.done() for item in items]
        if all(live):
            ids = [i for item in items for i in item.ids]
        else:
            rows = np.concatenate(
                [np.full(len(item.batch), keep) for item, keep in zip(items, live, strict=True)]
            )
            ids = [i for item, keep in zip(items, live, strict=True) if keep for i in item.ids]
            inputs, outputs = inputs[rows], [o[rows] for o in outputs]
        if not ids or len(ids) != len(inputs):
            return False  # a caller without ids: nothing to record them under
        trace = None
        if tracing.tracer is not None and any(item.trace is not None for item in items):
            traces = [
                tracing.trace_id(item.trace) if item.trace is not None else None
                for item, keep in zip(items, live, strict=True)
                if keep
                for _ in item.ids
            ]
            trace = tracing.RunTrace(run, traces)
        try:
            return self.on_run(self.model, inputs, outputs, ids, trace)
        except Exception:
            log.exception("the run hook failed for %s/%d", self.model.name, self.model.version)
            return False

    def _trace(self, items: list[_Item], inline: bool) -> Span | None:
        """Tracing on: each sampled request's ``queue wait`` (ending now), and the run's
        ``batch run`` span, started now and linked to every traced request of the batch;
        None when no request of the batch is sampled."""
        traced = [item.trace for item in items if item.trace is not None]
        if not any(span.is_recording() for span in traced):
            return None
        now, now_ns = time.perf_counter(), time.time_ns()
        for item in items:
            if item.trace is not None and item.trace.is_recording():
                tracing.queue_wait(item.trace, now_ns - int((now - item.enqueued) * 1e9), now_ns)
        return tracing.batch_run(
            traced,
            {
                "nnserve.model": self.model.name,
                "nnserve.version": self.model.version,
                "nnserve.batch.size": sum(len(item.batch) for item in items),
                "nnserve.batch.requests": len(items),
                "nnserve.batch.inline": inline,
            },
        )

    def _infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """One onnxruntime run, observed at the inference choke point."""
        started = time.perf_counter()
        outputs = self.model.run(batch)
        seconds = time.perf_counter() - started
        self.per_sample_s = 0.9 * self.per_sample_s + 0.1 * seconds / len(batch)
        children = self.metrics
        if children is not None:
            index = self.model.probabilities_index
            predicted = outputs[index].argmax(axis=1) if index is not None else None
            Metrics.inference_done(children, len(batch), seconds, predicted)
        return outputs

    # -- lifecycle -------------------------------------------------------------------------
    def idle(self) -> bool:
        return not self.items and not self.running and not self.scheduled

    async def close(self, timeout: float = 30.0) -> None:
        """Let queued work finish (bounded), then fail whatever is left."""
        deadline = time.monotonic() + timeout
        while not self.idle() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for item in self.items:
            if not item.future.done():
                item.future.set_exception(DeadlineExceeded("the model was unloaded"))
        self.items.clear()
        self.queued = 0
