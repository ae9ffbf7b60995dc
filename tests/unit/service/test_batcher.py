"""The batcher in-process, with a stand-in model whose run time we control."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np

from service.runtime.batcher import BatchConfig, Batcher


def fake_model(seconds_per_sample: float, slow_down: float) -> SimpleNamespace:
    """Outputs = inputs summed per sample; every run raises the measured cost per sample."""
    model = SimpleNamespace(
        name="m",
        version=1,
        probabilities_index=None,
        seconds_per_sample=seconds_per_sample,
        runs=[],
    )

    def run(batch: np.ndarray) -> list[np.ndarray]:
        model.runs.append(batch.shape)
        time.sleep(slow_down)
        return [batch.reshape(len(batch), -1).sum(axis=1, keepdims=True)]

    model.run = run
    return model


def test_every_sample_runs_once_whatever_the_cost_estimate_does() -> None:
    async def scenario() -> None:
        # starts just under the inline threshold; each run pushes the estimate over it
        model = fake_model(seconds_per_sample=0.00019, slow_down=0.002)
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, BatchConfig(max_batch_size=64), executor)  # type: ignore[arg-type]
            # one sample per length: every group is cheap when the drain first looks at it
            inputs = [np.full((1, length, 2), length, dtype=np.float32) for length in range(1, 9)]
            deadline = time.perf_counter() + 10
            outputs = await asyncio.wait_for(
                asyncio.gather(*(batcher.submit(x, deadline) for x in inputs)), timeout=10
            )
            for x, out in zip(inputs, outputs, strict=True):
                assert out.outputs[0].tolist() == [[x.sum()]]
            assert sum(shape[0] for shape in model.runs) == len(inputs)
            assert sorted(shape[1] for shape in model.runs) == list(range(1, 9))
            assert batcher.idle()

    asyncio.run(scenario())


def test_a_lone_request_runs_without_waiting_and_a_full_queue_refuses() -> None:
    async def scenario() -> None:
        model = fake_model(seconds_per_sample=0.0, slow_down=0.0)
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, BatchConfig(max_batch_size=4, max_queue_size=4), executor)  # type: ignore[arg-type]
            started = time.perf_counter()
            out = await batcher.submit(np.ones((1, 3), np.float32), started + 5)
            assert out.outputs[0].tolist() == [[3.0]]
            assert time.perf_counter() - started < 0.05
            from service.errors import Overloaded

            try:
                await batcher.submit(np.ones((5, 3), np.float32), started + 5)
            except Overloaded as exc:
                assert "queue is full" in exc.message
            else:
                raise AssertionError("a request over the queue bound was accepted")

    asyncio.run(scenario())


def test_the_run_hook_sees_each_run_once_with_its_ids_before_anyone_is_answered() -> None:
    async def scenario() -> None:
        model = fake_model(seconds_per_sample=0.0, slow_down=0.0)
        runs: list[tuple[list[str], list[float]]] = []
        answered: list[str] = []

        def hook(m: object, inputs: np.ndarray, outputs: list, ids: list[str], trace: None) -> bool:  # type: ignore[type-arg]
            assert answered == [] and m is model and trace is None  # tracing off
            runs.append((ids, outputs[0].ravel().tolist()))
            return True

        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(model, BatchConfig(max_batch_size=64), executor, on_run=hook)  # type: ignore[arg-type]
            deadline = time.perf_counter() + 10

            async def one(i: int) -> None:
                result = await batcher.submit(
                    np.full((2, 3), i, np.float32), deadline, [f"r{i}-0", f"r{i}-1"]
                )
                assert result.recorded and result.outputs[0].ravel().tolist() == [3.0 * i] * 2
                answered.append(f"r{i}")

            await asyncio.gather(*(one(i) for i in range(5)))
            # five concurrent requests, one run: one hook call with every id, in order
            assert runs == [([f"r{i}-{j}" for i in range(5) for j in (0, 1)],
                             [3.0 * i for i in range(5) for _ in (0, 1)])]  # fmt: skip
            # without ids (a caller that logs nothing) the hook is not called
            out = await batcher.submit(np.ones((1, 3), np.float32), deadline)
            assert not out.recorded and len(runs) == 1

    asyncio.run(scenario())
