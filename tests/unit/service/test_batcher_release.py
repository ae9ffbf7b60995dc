"""A retired version's batcher (and with it its onnxruntime session and card) is freed:
the queue-depth gauge it reports through must not keep it alive.

Found by tests/endurance/test_soak.py: in multiprocess mode (2+ workers) a retired
version's gauge child is never removed, and its function closed over the batcher, so every
worker kept every version it had served: about 1 MiB of RSS per version swap."""

from __future__ import annotations

import asyncio
import gc
import weakref
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Gauge

from service.runtime.batcher import BatchConfig, Batcher
from tests.unit.service.test_batcher import fake_model


def test_a_closed_batcher_is_freed_and_its_gauge_reads_zero() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("depth", "samples waiting", ["version"], registry=registry)

    async def scenario() -> weakref.ref[Batcher]:
        with ThreadPoolExecutor(1) as executor:
            metrics = SimpleNamespace(queue_depth=gauge.labels("1"))
            batcher = Batcher(fake_model(1e-3, 0.0), BatchConfig(), executor, metrics)  # type: ignore[arg-type]
            assert registry.get_sample_value("depth", {"version": "1"}) == 0  # read through it
            await asyncio.wait_for(batcher.close(1.0), timeout=10)
            return weakref.ref(batcher)

    gone = asyncio.run(scenario())
    gc.collect()
    assert gone() is None, "the retired batcher is still referenced"
    assert registry.get_sample_value("depth", {"version": "1"}) == 0
