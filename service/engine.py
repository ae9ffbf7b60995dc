"""Runs batches on onnxruntime in worker threads, so the event loop stays free, and observes
the inference metrics (the one choke point for them)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.metrics import Metrics
from service.model import ServedModel


class Engine:
    def __init__(self, threads: int = 2) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="infer")

    async def infer(self, model: ServedModel, batch: np.ndarray) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, self._run, model, batch, time.perf_counter()
        )

    @staticmethod
    def _run(model: ServedModel, batch: np.ndarray, enqueued: float) -> list[np.ndarray]:
        started = time.perf_counter()
        outputs = model.run(batch)
        seconds = time.perf_counter() - started
        children = model.metrics
        if children is not None:
            children.queue.observe(started - enqueued)
            predicted = (
                outputs[model.probabilities_index].argmax(axis=1)
                if model.probabilities_index is not None
                else None
            )
            Metrics.inference_done(children, len(batch), seconds, predicted)
        return outputs

    def close(self) -> None:
        self.executor.shutdown(wait=True)
