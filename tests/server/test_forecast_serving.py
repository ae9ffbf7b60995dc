"""The committed forecasters served by a real ``python -m service``: v1 answers forecasts in
ppm with the card's horizon, v2 the FP32 tensor, bad windows are refused naming what was
expected, batching changes nothing, and actual values fed back in pieces move the live error
metrics to exactly the figures they imply."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from modelrepo import read_card
from tests.support.metrics_text import parse, value
from tests.support.onnx_helpers import session
from tests.support.paths import MODELS
from tests.support.server import Server, running_server, wait_for

pytestmark = pytest.mark.server

FORECASTERS = ("co2-gru", "co2-lstm")


def windows(n: int, seed: int = 0) -> np.ndarray:
    """``n`` plausible raw windows: the committed card's reference windows, shifted."""
    card = read_card(MODELS / "co2-lstm" / "1")
    ref = np.asarray(card.reference[0].inputs[0].data, dtype=np.float32).reshape(-1, 104)
    shifts = np.random.default_rng(seed).uniform(-5, 5, size=(n, 1)).astype(np.float32)
    return (ref[np.arange(n) % len(ref)] + shifts).astype(np.float32)


def direct(name: str, batch: np.ndarray) -> np.ndarray:
    out: np.ndarray = session(MODELS / name / "1" / "model.onnx").run(
        ["predictions"], {"window": batch}
    )[0]
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("forecast")
    repository = tmp / "models"
    for name in FORECASTERS:
        shutil.copytree(MODELS / name, repository / name)
    with running_server(repository, tmp, NNSERVE_MAX_BATCH_DELAY_MS="20") as s:
        yield s


@pytest.mark.parametrize("name", FORECASTERS)
def test_v1_and_v2_give_the_graphs_forecast_with_exact_shapes(server: Server, name: str) -> None:
    batch = windows(3)
    expected = direct(name, batch)
    r = httpx.post(f"{server.url}/v1/models/{name}:predict", json={"instances": batch.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["horizon"] == 13 and body["units"] == "ppm" and body["step"] == "1 week"
    assert np.asarray(body["forecast"]).shape == (3, 13)
    assert len(body["ids"]) == 3 and len(set(body["ids"])) == 3
    np.testing.assert_array_equal(np.asarray(body["forecast"], dtype=np.float32), expected)
    assert expected.min() > 300 and expected.max() < 420  # ppm, not normalized units
    v2 = {"inputs": [{"name": "window", "shape": [3, 104], "datatype": "FP32",
                      "data": batch.ravel().tolist()}]}  # fmt: skip
    r = httpx.post(f"{server.url}/v2/models/{name}/infer", json=v2)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("predictions", "FP32", [3, 13])
    np.testing.assert_array_equal(np.asarray(out["data"], dtype=np.float32), expected.ravel())


def window_text(values: list[str]) -> str:
    return '{"instances": [[' + ", ".join(values) + "]]}"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (window_text(["350"] * 100), ["[104]", "[100]"]),  # a window of the wrong length
        ('{"instances": [[' + window_text(["350"] * 104)[15:-1] + "]}", ["[104]", "[1, 104]"]),
        (window_text(["1e999"] + ["350"] * 103), ["infinity"]),  # infinite: JSON says no
        (window_text(["NaN"] + ["350"] * 103), ["NaN"]),  # nor is NaN a JSON number
        (window_text(["null"] * 104), ["instances"]),  # not numbers
    ],
)
def test_bad_windows_are_refused_naming_what_was_expected(
    server: Server, text: str, words: list[str]
) -> None:
    r = httpx.post(
        f"{server.url}/v1/models/co2-lstm:predict",
        content=text,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text
    for word in words:
        assert word in r.json()["error"], r.json()["error"]


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_values_in_a_binary_v2_window_are_refused(server: Server, bad: float) -> None:
    batch = windows(2)
    batch[1, 50] = bad
    raw = batch.astype("<f4").tobytes()
    head = json.dumps(
        {"inputs": [{"name": "window", "shape": [2, 104], "datatype": "FP32",
                     "parameters": {"binary_data_size": len(raw)}}]}
    ).encode()  # fmt: skip
    r = httpx.post(
        f"{server.url}/v2/models/co2-lstm/infer",
        content=head + raw,
        headers={
            "Inference-Header-Content-Length": str(len(head)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status_code == 400, r.text
    assert "window" in r.json()["error"] and "finite" in r.json()["error"]


def test_concurrent_requests_batched_together_give_the_same_forecasts(server: Server) -> None:
    batch = windows(24, seed=3)
    expected = direct("co2-gru", batch)

    async def one(client: httpx.AsyncClient, row: np.ndarray) -> list[float]:
        r = await client.post("/v1/models/co2-gru:predict", json={"instances": [row.tolist()]})
        assert r.status_code == 200, r.text
        forecast: list[float] = r.json()["forecast"][0]
        return forecast

    async def all_at_once() -> list[list[float]]:
        async with httpx.AsyncClient(base_url=server.url) as client:
            return await asyncio.gather(*(one(client, row) for row in batch))

    def runs() -> float:
        samples = parse(httpx.get(f"{server.url}/metrics").text)
        return value(samples, "nnserve_batch_size_count", model="co2-gru", version="1")

    before = runs()
    got = np.asarray(asyncio.run(all_at_once()), dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
    assert 0 < runs() - before < 24  # some requests shared an onnxruntime run


def test_actuals_in_pieces_move_the_live_error_exactly(server: Server) -> None:
    name, mv = "co2-lstm", {"model": "co2-lstm", "version": "1"}
    r = httpx.post(
        f"{server.url}/v1/models/{name}:predict", json={"instances": windows(2).tolist()}
    )
    assert r.status_code == 200, r.text
    forecast, ids = r.json()["forecast"], r.json()["ids"]
    actual = [[f + 0.25 * (k + 1) * (-1) ** row for k, f in enumerate(fc)] for row, fc in
              enumerate(forecast)]  # fmt: skip
    pieces = [
        {"id": ids[0], "actuals": actual[0][:2]},  # the first two weeks
        [{"id": ids[0], "actuals": actual[0][2:5], "start": 2},
         {"id": ids[1], "actuals": actual[1][:1]}],
        {"id": ids[0], "actuals": actual[0][3:4], "start": 3},  # a repeat: stored once
    ]  # fmt: skip
    recorded = []
    for piece in pieces:
        r = httpx.post(f"{server.url}/v1/models/{name}/feedback", json=piece)
        assert r.status_code == 200, r.text
        recorded.append(r.json())
    assert recorded == [
        {"recorded": 2, "duplicates": 0},
        {"recorded": 4, "duplicates": 0},
        {"recorded": 0, "duplicates": 1},
    ]
    samples = parse(httpx.get(f"{server.url}/metrics").text)
    known = {0: [(0, 0), (1, 0)], 1: [(0, 1)], 2: [(0, 2)], 3: [(0, 3)], 4: [(0, 4)]}
    for step, cells in known.items():
        diffs = [forecast[row][k] - actual[row][k] for row, k in cells]
        labels = {**mv, "step": str(step + 1)}
        assert value(samples, "nnserve_forecast_actuals", **labels) == len(diffs)
        assert value(samples, "nnserve_forecast_mae", **labels) == math.fsum(
            abs(d) for d in diffs
        ) / len(diffs)
        assert value(samples, "nnserve_forecast_rmse", **labels) == math.sqrt(
            math.fsum(d * d for d in diffs) / len(diffs)
        )
    assert ("nnserve_forecast_mae", frozenset({**mv, "step": "6"}.items())) not in samples
    card = read_card(MODELS / name / "1")
    assert card.forecast is not None
    step1 = card.forecast.model_errors().per_step[0].mae
    assert value(samples, "nnserve_forecast_test_mae", **mv, step="1") == step1


@pytest.mark.parametrize(
    ("piece", "status", "words"),
    [
        ({"id": "x", "label": "a"}, 400, ["actuals"]),
        ({"id": "x", "actuals": [1.0] * 14}, 400, ["horizon is 13"]),
        ({"id": "x", "actuals": [1.0], "start": 13}, 400, ["'start'", "[0, 12]"]),
        ({"id": "nope", "actuals": [1.0]}, 404, ["nope"]),
    ],
)
def test_bad_actuals_are_refused(
    server: Server, piece: dict[str, object], status: int, words: list[str]
) -> None:
    r = httpx.post(f"{server.url}/v1/models/co2-lstm/feedback", json=piece)
    assert r.status_code == status, r.text
    for word in words:
        assert word in r.json()["error"]


def test_a_different_actual_for_a_known_step_conflicts(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/v1/models/co2-gru:predict", json={"instances": windows(1).tolist()}
    )
    ident = r.json()["ids"][0]
    ok = httpx.post(
        f"{server.url}/v1/models/co2-gru/feedback", json={"id": ident, "actuals": [350.0]}
    )
    assert ok.status_code == 200, ok.text
    clash = httpx.post(
        f"{server.url}/v1/models/co2-gru/feedback", json={"id": ident, "actuals": [351.0]}
    )
    assert clash.status_code == 409 and "step 0" in clash.json()["error"], clash.text


def test_input_drift_is_tracked_per_window_position(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/v1/models/co2-gru:predict", json={"instances": windows(8).tolist()}
    )
    assert r.status_code == 200, r.text

    def drift() -> dict[str, float]:
        samples = parse(httpx.get(f"{server.url}/metrics").text)
        return {
            dict(labels)["feature"]: v
            for (name, labels), v in samples.items()
            if name == "nnserve_input_drift_psi" and dict(labels)["model"] == "co2-gru"
        }

    wait_for(lambda: len(drift()) == 104, timeout=20)
    figures = drift()
    assert set(figures) == {f"t-{k}" for k in range(1, 105)}
    assert all(v >= 0 for v in figures.values())
