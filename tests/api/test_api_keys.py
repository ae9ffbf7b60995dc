"""Access control by API key, through the whole app in-process: what needs a key and what
stays open, 401s in the service's error format, the management token kept apart, the key id
in the access log line and the metric, and the key itself nowhere."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.http.auth import ApiKeyGuard
from service.keys import digest, new_key
from service.observability.logs import JsonFormatter
from service.settings import Settings
from tests.support import samples
from tests.support.metrics_text import parse, value
from tests.support.repo_tools import copy_models

ANN = "breast-cancer-ann"
ALICE, BOB, ADMIN = new_key(), new_key(), "admin-token-of-the-management-api"
ROWS = samples.rows(2)
V1_BODY = orjson.dumps({"instances": ROWS.tolist()})
TENSOR = {"name": "features", "shape": [2, 30], "datatype": "FP32"}
V2_JSON = orjson.dumps({"inputs": [{**TENSOR, "data": ROWS.ravel().tolist()}]})
V2_HEAD = orjson.dumps({"inputs": [{**TENSOR, "parameters": {"binary_data_size": ROWS.nbytes}}]})
#: (method, path, body, headers): every kind of call that needs a key
PROTECTED: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("POST", f"/v1/models/{ANN}:predict", V1_BODY, {}),
    ("POST", f"/v2/models/{ANN}/infer", V2_JSON, {}),
    (
        "POST",
        f"/v2/models/{ANN}/versions/1/infer",
        V2_HEAD + ROWS.tobytes(),
        {"Inference-Header-Content-Length": str(len(V2_HEAD))},
    ),
    ("POST", f"/v1/models/{ANN}/feedback", b"[]", {}),  # past the guard: 400, at once
    ("GET", f"/v2/models/{ANN}", b"", {}),
    ("GET", f"/v2/models/{ANN}/versions/1/ready", b"", {}),
    ("GET", f"/v1/models/{ANN}", b"", {}),
    ("GET", "/v1/models", b"", {}),
    ("GET", "/openapi.json", b"", {}),  # it describes every served model, labels included
    ("GET", "/docs", b"", {}),
]
OPEN = ["/v2", "/v2/health/live", "/v2/health/ready", "/metrics"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    file = tmp_path_factory.mktemp("keys") / "api-keys"
    file.write_text(
        f"# API keys\nalice:{digest(ALICE.encode()).hex()}\nbob:{digest(BOB.encode()).hex()}\n"
    )
    return file


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_models(tmp_path_factory.mktemp("repo"), ANN)


def app_client(repository: Path, data: Path, **settings: object) -> TestClient:
    app = create_app(
        Settings(
            model_repository=repository,
            data_dir=data,
            poll_interval=0,
            admin_token=ADMIN,
            max_body_bytes=100_000,
            **settings,  # type: ignore[arg-type]
        )
    )
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(
    repository: Path, key_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    with app_client(repository, tmp_path_factory.mktemp("data"), api_keys_file=key_file) as c:
        yield c


def assert_refused(response: object, fragment: str) -> None:
    assert response.status_code == 401, response.text  # type: ignore[attr-defined]
    assert response.headers["www-authenticate"] == "Bearer"  # type: ignore[attr-defined]
    assert response.headers["x-request-id"]  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and fragment in body["error"]


@pytest.mark.parametrize(("method", "path", "body", "headers"), PROTECTED)
def test_every_inference_and_model_call_needs_a_valid_key(
    client: TestClient, method: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    def call(extra: dict[str, str]) -> object:
        return client.request(method, path, content=body or None, headers={**headers, **extra})

    assert_refused(call({}), "needs an API key")
    assert_refused(call({"Authorization": f"Basic {ALICE}"}), "needs an API key")
    assert_refused(call(bearer("")), "needs an API key")
    assert_refused(call(bearer(ALICE + "x")), "invalid API key")
    assert_refused(call(bearer(digest(ALICE.encode()).hex())), "invalid API key")
    assert_refused(call(bearer(ADMIN)), "invalid API key")  # the management token is no key
    accepted = call(bearer(ALICE))
    want = 400 if path.endswith("/feedback") else 200
    assert accepted.status_code == want, accepted.text  # type: ignore[attr-defined]
    lower = call({"authorization": f"bearer {BOB}"})  # the scheme is case-insensitive
    assert lower.status_code == accepted.status_code  # type: ignore[attr-defined]


def test_a_prediction_and_its_feedback_with_a_key(client: TestClient) -> None:
    r = client.post(f"/v1/models/{ANN}:predict", content=V1_BODY, headers=bearer(ALICE))
    assert r.status_code == 200, r.text
    first = r.json()["predictions"][0]
    feedback = {"id": first["id"], "label": first["label"]}
    assert_refused(client.post(f"/v1/models/{ANN}/feedback", json=feedback), "needs an API key")
    r = client.post(f"/v1/models/{ANN}/feedback", json=feedback, headers=bearer(BOB))
    assert r.status_code == 200, r.text
    assert r.json() == {"recorded": 1, "duplicates": 0}


@pytest.mark.parametrize("path", OPEN)
def test_health_server_metadata_and_metrics_stay_open(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


def test_the_refusal_comes_before_the_body_is_read(client: TestClient) -> None:
    big = b"[" + b"1," * 200_000 + b"1]"  # over max_body_bytes
    assert_refused(client.post(f"/v1/models/{ANN}:predict", content=big), "needs an API key")
    r = client.post(f"/v1/models/{ANN}:predict", content=big, headers=bearer(ALICE))
    assert r.status_code == 413


def test_paths_not_listed_as_open_need_a_key(client: TestClient) -> None:
    assert_refused(client.get("/no/such/route"), "needs an API key")
    assert client.get("/no/such/route", headers=bearer(ALICE)).status_code == 404
    assert_refused(client.get("/v2/models/nope/ready"), "needs an API key")
    assert client.get("/v2/models/nope/ready", headers=bearer(ALICE)).status_code == 404


def test_the_management_api_keeps_its_own_token(client: TestClient) -> None:
    index = "/v2/repository/index"
    assert client.post(index, headers=bearer(ADMIN)).status_code == 200
    for token in (ALICE, BOB):
        r = client.post(index, headers=bearer(token))
        assert r.status_code == 401 and "bearer token" in r.json()["error"]


def test_the_key_id_is_in_the_log_line_and_the_metric_never_the_key(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    before = parse(client.get("/metrics").text)
    with caplog.at_level(logging.DEBUG, logger="nnserve"):
        assert client.get("/v2/models/nope", headers=bearer(ALICE)).status_code == 404
        assert client.get(f"/v2/models/{ANN}", headers=bearer(BOB)).status_code == 200
        assert client.get(f"/v2/models/{ANN}", headers=bearer(BOB + "x")).status_code == 401
        assert client.get(f"/v2/models/{ANN}").status_code == 401
        assert client.get("/v2/health/ready").status_code == 200
    lines = [r for r in caplog.records if r.name == "nnserve.http"]
    assert [(r.getMessage(), getattr(r, "key", None)) for r in lines] == [
        ("GET /v2/models/nope -> 404", "alice"),
        (f"GET /v2/models/{ANN} -> 200", "bob"),
        (f"GET /v2/models/{ANN} -> 401", "invalid"),
        (f"GET /v2/models/{ANN} -> 401", "missing"),
        ("GET /v2/health/ready -> 200", None),  # open: no key asked, none named
    ]
    assert orjson.loads(JsonFormatter().format(lines[0]))["key"] == "alice"
    text = client.get("/metrics").text
    after = parse(text)

    def moved(key: str, outcome: str) -> float:
        name = "nnserve_api_key_requests_total"
        return value(after, name, key=key, outcome=outcome) - value(
            before, name, key=key, outcome=outcome
        )

    assert moved("alice", "accepted") == 1 and moved("bob", "accepted") == 1
    assert moved("invalid", "rejected") == 1 and moved("missing", "rejected") == 1
    keys = {dict(labels)["key"] for name, labels in after if name.startswith("nnserve_api_key")}
    assert keys == {"alice", "bob", "missing", "invalid"}  # only configured ids: bounded
    for secret in (ALICE, BOB, ADMIN, digest(ALICE.encode()).hex()):
        assert secret not in text and secret not in caplog.text
        assert all(secret not in JsonFormatter().format(r) for r in caplog.records)


def test_metrics_can_need_a_key_too(repository: Path, key_file: Path, tmp_path: Path) -> None:
    with app_client(
        repository, tmp_path, api_keys_file=key_file, api_keys_protect_metrics=True
    ) as client:
        assert_refused(client.get("/metrics"), "needs an API key")
        assert client.get("/metrics", headers=bearer(ALICE)).status_code == 200
        assert client.get("/v2/health/ready").status_code == 200


def test_keys_from_the_environment_alone(repository: Path, tmp_path: Path) -> None:
    with app_client(repository, tmp_path, api_keys=f"ci:{digest(BOB.encode()).hex()}") as client:
        assert client.get("/v1/models", headers=bearer(BOB)).status_code == 200
        assert_refused(client.get("/v1/models", headers=bearer(ALICE)), "invalid API key")


def test_without_keys_there_is_no_guard_at_all(repository: Path, tmp_path: Path) -> None:
    with app_client(repository, tmp_path) as client:
        chain = client.app.edge.app  # type: ignore[attr-defined]
        assert not isinstance(chain, ApiKeyGuard)
        assert client.get("/v1/models").status_code == 200
        assert "nnserve_api_key_requests_total{" not in client.get("/metrics").text
