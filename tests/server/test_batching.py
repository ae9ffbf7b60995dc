"""Dynamic batching against a real server: same predictions, bounded queue, deadlines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np

from tests.support import samples
from tests.support.metrics_text import parse, value
from tests.support.onnx_helpers import session
from tests.support.paths import MODELS
from tests.support.server import running_server


async def gather_posts(
    url: str, bodies: list[dict[str, object]], headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return list(
            await asyncio.gather(*(client.post(url, json=b, headers=headers) for b in bodies))
        )


def test_concurrent_batched_outputs_equal_one_at_a_time_runs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    seqs = samples.sequences(tuple(int(n) for n in rng.integers(5, 30, size=48)), seed=2)
    images = samples.images(48, seed=3)
    with running_server(
        MODELS, tmp_path, NNSERVE_MAX_BATCH_DELAY_MS="20", NNSERVE_MAX_BATCH_SIZE="16"
    ) as server:
        lstm = asyncio.run(
            gather_posts(
                f"{server.url}/v1/models/vowels-lstm:predict",
                [{"instances": [s.tolist()]} for s in seqs],
            )
        )
        cnn = asyncio.run(
            gather_posts(
                f"{server.url}/v1/models/fashion-cnn:predict",
                [{"instances": [i.tolist()]} for i in images],
            )
        )
        metrics = parse(httpx.get(f"{server.url}/metrics").text)
    lstm_session = session(MODELS / "vowels-lstm" / "1" / "model.onnx")
    for response, seq in zip(lstm, seqs, strict=True):
        assert response.status_code == 200, response.text
        got = list(response.json()["predictions"][0]["probabilities"].values())
        want = lstm_session.run(["probabilities"], {"sequences": seq[None]})[0][0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    cnn_session = session(MODELS / "fashion-cnn" / "1" / "model.onnx")
    for response, image in zip(cnn, images, strict=True):
        got = list(response.json()["predictions"][0]["probabilities"].values())
        want = cnn_session.run(["probabilities"], {"images": image[None]})[0][0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # batching really happened: fewer runs than samples, and no batch over the limit
    for model in ("fashion-cnn", "vowels-lstm"):
        mv = {"model": model, "version": "1"}
        runs = value(metrics, "nnserve_inference_runs_total", **mv)
        assert value(metrics, "nnserve_inferred_samples_total", **mv) == 48
        assert runs < 48, f"{model}: {runs} runs for 48 samples"
        assert value(metrics, "nnserve_batch_size_bucket", le="16.0", **mv) == runs


def test_a_full_queue_answers_503_with_retry_after_and_recovers(tmp_path: Path) -> None:
    big = {"instances": samples.images(64).astype(int).tolist()}
    with running_server(
        MODELS,
        tmp_path,
        NNSERVE_MAX_QUEUE_SIZE="64",
        NNSERVE_MAX_BATCH_SIZE="64",
        NNSERVE_INFERENCE_THREADS="1",
    ) as server:
        url = f"{server.url}/v1/models/fashion-cnn:predict"
        responses = asyncio.run(gather_posts(url, [big] * 24))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503}, codes
        assert codes.count(503) > 0 and codes.count(200) > 0, codes
        for r in responses:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1"
                assert "queue is full" in r.json()["error"]
        again = httpx.post(url, json={"instances": samples.images(1).astype(int).tolist()})
        assert again.status_code == 200
        metrics = parse(httpx.get(f"{server.url}/metrics").text)
    mv = {"model": "fashion-cnn", "version": "1"}
    assert value(metrics, "nnserve_requests_total", protocol="v1", code="503", **mv) == codes.count(
        503
    )
    assert value(metrics, "nnserve_queue_depth", **mv) == 0


def test_deadlines_give_504_and_the_service_recovers(tmp_path: Path) -> None:
    big = {"instances": samples.images(64).astype(int).tolist()}
    with running_server(
        MODELS, tmp_path, NNSERVE_MAX_BATCH_SIZE="64", NNSERVE_INFERENCE_THREADS="1"
    ) as server:
        url = f"{server.url}/v1/models/fashion-cnn:predict"
        responses = asyncio.run(
            gather_posts(url, [big] * 12, headers={"X-Request-Timeout-Ms": "5"})
        )
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 504} and 504 in codes, codes
        late = next(r for r in responses if r.status_code == 504)
        assert "deadline" in late.json()["error"]
        bad = httpx.post(url, json=big, headers={"X-Request-Timeout-Ms": "soon"})
        assert bad.status_code == 400 and "X-Request-Timeout-Ms" in bad.json()["error"]
        ok = httpx.post(url, json=big)
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 64
        metrics = parse(httpx.get(f"{server.url}/metrics").text)
    # samples that expired while queued were dropped, never run
    assert value(
        metrics, "nnserve_inferred_samples_total", model="fashion-cnn", version="1"
    ) < 64 * (codes.count(200) + codes.count(504) + 1)
