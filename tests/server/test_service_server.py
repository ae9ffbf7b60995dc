"""Against a real uvicorn server on 127.0.0.1: every protocol gives what onnxruntime gives,
and the metrics move by exactly the requests sent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelrepo import scan
from tests.support import samples
from tests.support.metrics_text import parse, value
from tests.support.paths import MODELS
from tests.support.samples import INPUTS, batch_for, direct
from tests.support.server import Server, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(MODELS, tmp_path_factory.mktemp("server")) as s:
        yield s


def via_v1(url: str, name: str, batch: np.ndarray) -> np.ndarray:
    r = httpx.post(f"{url}/v1/models/{name}:predict", json={"instances": batch.tolist()})
    assert r.status_code == 200, r.text
    return np.array([list(p["probabilities"].values()) for p in r.json()["predictions"]])


def via_v2_json(url: str, name: str, batch: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {
                "name": INPUTS[name],
                "shape": list(batch.shape),
                "datatype": "FP32",
                "data": batch.ravel().tolist(),
            }
        ]
    }
    r = httpx.post(f"{url}/v2/models/{name}/infer", json=body)
    assert r.status_code == 200, r.text
    out = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    return np.reshape(out["data"], out["shape"])


def via_v2_binary(url: str, name: str, batch: np.ndarray) -> np.ndarray:
    raw = batch.astype("<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": INPUTS[name],
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    r = httpx.post(
        f"{url}/v2/models/{name}/infer",
        content=head + raw,
        headers={
            "Inference-Header-Content-Length": str(len(head)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    outputs = json.loads(r.content[:n])["outputs"]
    offset = n
    for out in outputs:
        size = out["parameters"]["binary_data_size"]
        if out["name"] == "probabilities":
            return np.frombuffer(r.content[offset : offset + size], "<f4").reshape(out["shape"])
        offset += size
    raise AssertionError("no probabilities output")


PROTOCOLS = {"v1": via_v1, "v2-json": via_v2_json, "v2-binary": via_v2_binary}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_outputs_equal_a_direct_onnxruntime_run(server: Server, name: str, protocol: str) -> None:
    batch = batch_for(name)
    got = PROTOCOLS[protocol](server.url, name, batch)
    np.testing.assert_allclose(got, direct(name, batch), rtol=1e-5, atol=1e-6)


def test_metrics_move_by_exactly_the_requests_sent(server: Server) -> None:
    before = parse(httpx.get(f"{server.url}/metrics").text)
    sent = {"v1": 3, "v2": 2}
    batch = batch_for("fashion-cnn")
    for _ in range(sent["v1"]):
        via_v1(server.url, "fashion-cnn", batch)
    for _ in range(sent["v2"]):
        via_v2_json(server.url, "fashion-cnn", batch)
    bad = httpx.post(f"{server.url}/v1/models/fashion-cnn:predict", content=b"{")
    assert bad.status_code == 400
    after = parse(httpx.get(f"{server.url}/metrics").text)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    mv = {"model": "fashion-cnn", "version": "1"}
    assert delta("nnserve_requests_total", protocol="v1", code="200", **mv) == sent["v1"]
    assert delta("nnserve_requests_total", protocol="v2", code="200", **mv) == sent["v2"]
    assert delta("nnserve_requests_total", protocol="v1", code="400", **mv) == 1
    assert (
        delta("nnserve_requests_total", protocol="metrics", code="200", model="", version="") == 1
    )  # the first scrape; the second is still being answered
    assert delta("nnserve_request_duration_seconds_count", protocol="v1", **mv) == sent["v1"] + 1
    assert delta("nnserve_request_duration_seconds_count", protocol="v2", **mv) == sent["v2"]
    runs = sent["v1"] + sent["v2"]
    assert delta("nnserve_inference_runs_total", **mv) == runs
    assert delta("nnserve_inference_duration_seconds_count", **mv) == runs
    assert delta("nnserve_queue_duration_seconds_count", **mv) == runs
    assert delta("nnserve_batch_size_count", **mv) == runs
    assert delta("nnserve_batch_size_sum", **mv) == runs * len(batch)
    assert delta("nnserve_inferred_samples_total", **mv) == runs * len(batch)
    labels = json.loads((MODELS / "fashion-cnn" / "1" / "model.json").read_text())["labels"]
    predicted = sum(delta("nnserve_predictions_total", label=label, **mv) for label in labels)
    assert predicted == runs * len(batch)
    assert value(after, "nnserve_requests_in_flight", protocol="v1") == 0
    assert value(after, "nnserve_models_loaded") == len(scan(MODELS))  # every committed one
    info = [labels for (name, labels), v in after.items() if name == "nnserve_model_info"]
    assert len(info) == len(scan(MODELS)) and all(dict(i)["sha256"] for i in info)
    assert value(after, "process_resident_memory_bytes") > 0


def test_request_ids_are_returned_and_honoured(server: Server, tmp_path: Path) -> None:
    r = httpx.post(
        f"{server.url}/v1/models/breast-cancer-ann:predict",
        json={"instances": samples.rows(1).tolist()},
        headers={"X-Request-Id": "trace-abc.123"},
    )
    assert r.headers["x-request-id"] == "trace-abc.123" == r.json()["id"]
    r = httpx.post(f"{server.url}/v1/models/breast-cancer-ann:predict", content=b"[")
    rid = r.headers["x-request-id"]
    again = httpx.post(f"{server.url}/v1/models/breast-cancer-ann:predict", content=b"[")
    assert re.fullmatch(r"[0-9a-f]{20}", rid) and again.headers["x-request-id"] != rid
    lines = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == rid and line.get("status") == 400 for line in lines)


def test_oversized_body_is_refused_without_reading_it(server: Server) -> None:
    limit = 16 * 1024 * 1024
    with httpx.Client() as client:
        r = client.post(f"{server.url}/v1/models/fashion-cnn:predict", content=b"x" * (limit + 1))
        assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
    assert via_v1(server.url, "breast-cancer-ann", samples.rows(1)).shape == (1, 2)
