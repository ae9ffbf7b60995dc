"""One route table: the prediction routes answer the same through the ASGI fast path and
through FastAPI's own stack, and the OpenAPI document is generated from that table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.http.edge import RequestObserver
from service.http.inference import ROUTES
from service.observability.metrics import Metrics
from service.settings import Settings
from tests.support import samples
from tests.support.paths import MODELS


def client_for(data: Path, fast_path: bool) -> TestClient:
    app = create_app(Settings(model_repository=MODELS, data_dir=data, poll_interval=0))
    if not fast_path:  # the observer straight onto FastAPI: every route through its stack
        app.edge = RequestObserver(app.framework, Metrics())
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, TestClient]]:
    with (
        client_for(tmp_path_factory.mktemp("fast"), fast_path=True) as fast,
        client_for(tmp_path_factory.mktemp("framework"), fast_path=False) as framework,
    ):
        yield fast, framework


def image_tensor(batch: np.ndarray, datatype: str = "FP32") -> dict[str, object]:
    return {"name": "images", "shape": list(batch.shape), "datatype": datatype}


def binary_v2(batch: np.ndarray) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(
        {
            "inputs": [{**image_tensor(batch), "parameters": {"binary_data_size": batch.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    )
    return head + batch.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


IMAGES = samples.images(2)
SEQUENCES = [s.tolist() for s in samples.sequences((7, 15, 7))]
CALLS: list[tuple[str, bytes, dict[str, str]]] = [
    (
        "/v1/models/breast-cancer-ann:predict",
        orjson.dumps({"instances": samples.rows(3).tolist()}),
        {},
    ),
    ("/v1/models/vowels-lstm:predict", orjson.dumps({"instances": SEQUENCES}), {}),
    ("/v1/models/fashion-cnn:predict", orjson.dumps({"instances": IMAGES.tolist()}), {}),
    (
        "/v2/models/fashion-cnn/infer",
        orjson.dumps({"inputs": [{**image_tensor(IMAGES), "data": IMAGES.ravel().tolist()}]}),
        {},
    ),
    ("/v2/models/fashion-cnn/versions/1/infer", *binary_v2(IMAGES)),
    # errors: each layer's, through the same table
    ("/v1/models/fashion-cnn:predict", b"{not json", {}),
    ("/v1/models/fashion-cnn:predict", orjson.dumps({"instances": [[1, 2]]}), {}),
    ("/v2/models/nope/infer", b"{}", {}),
    ("/v2/models/fashion-cnn/versions/7/infer", b"{}", {}),
    ("/v2/models/fashion-cnn/versions/01/infer", b"{}", {}),
    (
        "/v2/models/fashion-cnn/infer",
        orjson.dumps({"inputs": [{**image_tensor(IMAGES, "BYTES"), "data": []}]}),
        {},
    ),
    ("/v2/models/fashion-cnn/infer", b"{}", {"X-Request-Timeout-Ms": "soon"}),
    ("/v2/models/fashion-cnn/infer", b"{}", {"Inference-Header-Content-Length": "x"}),
]


@pytest.mark.parametrize(("path", "body", "headers"), CALLS, ids=[c[0] for c in CALLS])
def test_fast_path_and_framework_answer_alike(
    clients: tuple[TestClient, TestClient], path: str, body: bytes, headers: dict[str, str]
) -> None:
    fast, framework = clients
    answers = [
        c.post(path, content=body, headers={**headers, "X-Request-Id": "same-id"})
        for c in (fast, framework)
    ]
    assert answers[0].status_code == answers[1].status_code, [a.text for a in answers]
    assert answers[0].content == answers[1].content
    for name in ("content-type", "inference-header-content-length", "x-request-id"):
        assert answers[0].headers.get(name) == answers[1].headers.get(name), name
    if answers[0].status_code == 200 and path.startswith("/v1"):
        assert len(answers[0].json()["predictions"]) > 1


def test_openapi_paths_come_from_the_route_table(clients: tuple[TestClient, TestClient]) -> None:
    spec = clients[0].get("/openapi.json").json()
    for route in ROUTES:
        operation = spec["paths"][route.path]["post"]
        assert operation["summary"] == route.summary and operation["tags"] == [route.tag]
        body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body.rsplit("/", 1)[1] in spec["components"]["schemas"]
        assert ("application/octet-stream" in operation["requestBody"]["content"]) == route.binary
        params = {(p["in"], p["name"]) for p in operation["parameters"]}
        assert {("path", "model_name"), ("header", "X-Request-Timeout-Ms")} <= params
        assert {"400", "404", "413", "503", "504"} <= set(operation["responses"])
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ok.endswith(route.response)
