"""Dynamic batching for one model version.

Requests queue their samples; one worker task takes whatever is queued (up to
``max_batch_size`` samples), runs it on onnxruntime in a worker thread, and hands each request
its slice of the outputs. While a batch runs, new requests queue up, so the next batch grows
with the load by itself. The worker waits up to ``max_batch_delay`` for more only when it
already has company: a lone request (concurrency 1) never waits.

Samples are batched only with samples of the same shape, so variable-length sequences run in
groups of one length: batching never changes a prediction. The queue is bounded (503 +
Retry-After when full) and every request has a deadline (504; a sample whose deadline passes
before its batch starts is dropped from it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service.errors import DeadlineExceeded, InvalidInput, Overloaded
from service.metrics import Metrics
from service.model import ServedModel

log = logging.getLogger("nnserve.batcher")


@dataclass(frozen=True)
class BatchConfig:
    max_batch_size: int = 32
    max_batch_delay_s: float = 0.001
    max_queue_size: int = 1024  # samples
    inline_s: float = 0.0002  # batches expected to run faster than this skip the thread hop


@dataclass(eq=False)
class _Item:
    batch: np.ndarray
    future: asyncio.Future[list[np.ndarray]]
    enqueued: float
    timer: asyncio.TimerHandle | None = field(default=None)


class Batcher:
    def __init__(self, model: ServedModel, config: BatchConfig, executor: Executor) -> None:
        self.model = model
        self.config = config
        self.executor = executor
        self.items: deque[_Item] = deque()
        self.queued = 0  # samples waiting
        self.running = False
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(
            self._work(), name=f"batcher {model.name}/{model.version}"
        )
        if model.metrics is not None:  # read at scrape time, no lock per request
            model.metrics.queue_depth.set_function(lambda: self.queued)
        #: Seconds per sample (moving average): batches expected to take less than
        #: ``inline_s`` run on the event loop, as the thread hop would cost more than the run.
        self.per_sample_s = model.seconds_per_sample

    # -- the request side ------------------------------------------------------------------
    async def submit(self, batch: np.ndarray, deadline: float) -> list[np.ndarray]:
        """Outputs for ``batch`` (a request's samples), computed in some batch."""
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
        if not self.items and not self.running and self.per_sample_s * n <= self.config.inline_s:
            # Nothing to wait for and nothing to batch with (e.g. concurrency 1): run it now.
            if self.model.metrics is not None:
                self.model.metrics.queue.observe(0.0)
            return self._infer(batch)
        loop = asyncio.get_running_loop()
        item = _Item(batch, loop.create_future(), now)
        remaining = deadline - now
        item.timer = loop.call_later(remaining, self._expire, item)
        self.items.append(item)
        self._add(n)
        self._wakeup.set()
        return await item.future

    def _expire(self, item: _Item) -> None:
        if not item.future.done():
            item.future.set_exception(
                DeadlineExceeded(
                    f"no result within the request's deadline for model {self.model.name!r}"
                )
            )

    def _add(self, n: int) -> None:
        self.queued += n

    # -- the worker ------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            if not self.items:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            taken = self._take([])
            size = sum(len(i.batch) for i in taken)
            if (
                len(taken) > 1
                and size < self.config.max_batch_size
                and (self.config.max_batch_delay_s > 0)
            ):
                await asyncio.sleep(self.config.max_batch_delay_s)
                taken = self._take(taken)
            if not taken:
                continue
            self.running = True
            try:
                await self._run(taken)
            finally:
                self.running = False

    def _take(self, taken: list[_Item]) -> list[_Item]:
        """Queued items (FIFO) up to max_batch_size samples; expired ones are dropped."""
        size = sum(len(i.batch) for i in taken)
        while self.items:
            item = self.items[0]
            n = len(item.batch)
            if taken and size + n > self.config.max_batch_size:
                break
            self.items.popleft()
            self._add(-n)
            if item.future.done():  # its deadline passed while queued: dropped, never run
                continue
            taken.append(item)
            size += n
        return taken

    async def _run(self, taken: list[_Item]) -> None:
        groups: dict[tuple[int, ...], list[_Item]] = {}
        for item in taken:
            groups.setdefault(item.batch.shape[1:], []).append(item)
        loop = asyncio.get_running_loop()
        for items in groups.values():
            started = time.perf_counter()
            children = self.model.metrics
            if children is not None:
                for item in items:
                    children.queue.observe(started - item.enqueued)
            batch = items[0].batch if len(items) == 1 else np.concatenate([i.batch for i in items])
            try:
                if self.per_sample_s * len(batch) <= self.config.inline_s:
                    outputs = self._infer(batch)
                else:
                    outputs = await loop.run_in_executor(self.executor, self._infer, batch)
            except Exception as exc:  # an onnxruntime failure: each request gets a 500
                log.exception("inference failed for %s/%d", self.model.name, self.model.version)
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            offset = 0
            for item in items:
                n = len(item.batch)
                if item.timer is not None:
                    item.timer.cancel()
                if not item.future.done():
                    item.future.set_result([o[offset : offset + n] for o in outputs])
                offset += n

    def _infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """In a worker thread: one onnxruntime run, observed at the inference choke point."""
        started = time.perf_counter()
        outputs = self.model.run(batch)
        seconds = time.perf_counter() - started
        self.per_sample_s = 0.9 * self.per_sample_s + 0.1 * seconds / len(batch)
        children = self.model.metrics
        if children is not None:
            index = self.model.probabilities_index
            predicted = outputs[index].argmax(axis=1) if index is not None else None
            Metrics.inference_done(children, len(batch), seconds, predicted)
        return outputs

    # -- lifecycle -------------------------------------------------------------------------
    def idle(self) -> bool:
        return not self.items and not self.running

    async def close(self, timeout: float = 30.0) -> None:
        """Let queued work finish (bounded), then stop the worker."""
        deadline = time.monotonic() + timeout
        while not self.idle() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._task.cancel()
        for item in self.items:
            if not item.future.done():
                item.future.set_exception(DeadlineExceeded("the model was unloaded"))
        self.items.clear()
        self.queued = 0


TIMEOUT_HEADER = "x-request-timeout-ms"


def deadline_from(header: str | None, default_s: float) -> float:
    """Absolute ``perf_counter`` deadline: the ``X-Request-Timeout-Ms`` header, else the
    default (``NNSERVE_REQUEST_TIMEOUT_MS``)."""
    timeout = default_s
    if header is not None:
        try:
            timeout = float(header) / 1000
        except ValueError:
            timeout = math.nan
        if not (math.isfinite(timeout) and timeout > 0):
            raise InvalidInput(
                f"X-Request-Timeout-Ms must be a positive number of milliseconds, got {header!r}"
            )
    return time.perf_counter() + timeout
