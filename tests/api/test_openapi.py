"""The OpenAPI document describes every served model exactly (service/http/openapi.py,
service/protocol/openapi.py), follows loads and unloads, and the bugs the fuzzer found
(tests/server/test_fuzz.py) stay fixed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

from service.app import create_app
from service.http.openapi import PER_MODEL
from service.settings import Settings
from tests.support.paths import MODELS
from tests.support.repo_tools import copy_models, publish_copy

TOKEN = "openapi-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAMES = ["breast-cancer-ann", "fashion-cnn", "vowels-lstm"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        model_repository=MODELS,
        data_dir=tmp_path_factory.mktemp("data"),
        poll_interval=0,
        admin_token=TOKEN,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def validator(spec: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator of ``schema`` resolving ``#/components/...`` in the document."""
    return Draft202012Validator({"components": spec["components"], **schema})


def component(spec: dict[str, Any], ref: dict[str, str]) -> dict[str, Any]:
    schema: dict[str, Any] = spec["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
    return schema


# -- per-model paths and bodies --------------------------------------------------------------
def test_every_model_and_version_has_concrete_paths(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    for name in NAMES:
        for path in (
            f"/v1/models/{name}:predict",
            f"/v1/models/{name}/feedback",
            f"/v2/models/{name}/infer",
            f"/v2/models/{name}/versions/1/infer",
            f"/v2/models/{name}",
            f"/v2/models/{name}/versions/1/ready",
            f"/v2/repository/models/{name}/unload",
        ):
            assert path in paths, path
            for operation in paths[path].values():
                assert not [p for p in operation.get("parameters", []) if p["in"] == "path"]
                assert operation["tags"] == [f"Model {name}"]
    # the templated paths stay, with the generic bodies
    body = paths["/v2/models/{model_name}/infer"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["$ref"] == "#/components/schemas/V2InferRequest"
    ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ids) == len(set(ids))
    for method, path in PER_MODEL:  # the table names real templated operations
        assert method in paths[path]


def test_request_schemas_are_exact(spec: dict[str, Any]) -> None:
    def request(path: str) -> dict[str, Any]:
        content = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        return component(spec, content["schema"])

    row, named = request("/v1/models/breast-cancer-ann:predict")["properties"]["instances"][
        "items"
    ]["anyOf"]
    assert row["minItems"] == row["maxItems"] == 30
    assert len(named["required"]) == 30 and "mean radius" in named["properties"]
    image = request("/v1/models/fashion-cnn:predict")["properties"]["instances"]["items"]
    assert image["minItems"] == image["maxItems"] == 28
    assert image["items"]["items"] == {"type": "number", "minimum": 0.0, "maximum": 255.0}
    steps = request("/v1/models/vowels-lstm:predict")["properties"]["instances"]["items"]
    assert steps["minItems"] == 1 and "maxItems" not in steps
    assert steps["items"]["minItems"] == steps["items"]["maxItems"] == 12

    tensor = request("/v2/models/fashion-cnn/versions/1/infer")["properties"]["inputs"]
    assert tensor["minItems"] == tensor["maxItems"] == 1
    props = tensor["items"]["properties"]
    assert props["name"] == {"const": "images"}
    assert props["shape"]["prefixItems"][1:] == [{"const": 28}, {"const": 28}]
    assert props["datatype"]["default"] == "FP32" and "BOOL" not in props["datatype"]["enum"]
    assert props["data"]["anyOf"][0]["minItems"] == 784
    wanted = request("/v2/models/fashion-cnn/infer")["properties"]["outputs"]["items"]
    assert wanted["properties"]["name"] == {"enum": ["logits", "probabilities"]}
    feedback = request("/v1/models/fashion-cnn/feedback")["anyOf"][0]
    assert "Ankle boot" in feedback["properties"]["label"]["enum"]


def test_response_schemas_are_exact(spec: dict[str, Any]) -> None:
    def ok(path: str, method: str = "post") -> dict[str, Any]:
        content = spec["paths"][path][method]["responses"]["200"]["content"]
        return component(spec, content["application/json"]["schema"])

    prediction = ok("/v1/models/breast-cancer-ann:predict")["properties"]["predictions"]["items"]
    assert prediction["properties"]["label"] == {"enum": ["malignant", "benign"]}
    probabilities = prediction["properties"]["probabilities"]
    assert probabilities["required"] == ["malignant", "benign"]
    assert probabilities["additionalProperties"] is False
    outputs = ok("/v2/models/vowels-lstm/versions/1/infer")["properties"]
    assert outputs["model_version"] == {"enum": ["1"]}
    names = [o["properties"]["name"] for o in outputs["outputs"]["items"]["oneOf"]]
    assert names == [{"const": "logits"}, {"const": "probabilities"}]
    metadata = ok("/v2/models/fashion-cnn", "get")["properties"]
    assert metadata["inputs"] == {
        "const": [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}]
    }


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("path", ["/v1/models/{}:predict", "/v2/models/{}/versions/1/infer"])
def test_documented_examples_are_served_and_answers_match_the_schema(
    client: TestClient, spec: dict[str, Any], name: str, path: str
) -> None:
    path = path.format(name)
    operation = spec["paths"][path]["post"]
    media = operation["requestBody"]["content"]["application/json"]
    validator(spec, media["schema"]).validate(media["example"])
    answer = client.post(path, content=orjson.dumps(media["example"]))
    assert answer.status_code == 200, answer.text
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    validator(spec, ok).validate(answer.json())
    wrong = {"inputs": [{"name": "x"}]} if "/v2/" in path else {"instances": [[1, 2]]}
    assert not validator(spec, media["schema"]).is_valid(wrong)


# -- the document follows the served models ---------------------------------------------------
def test_the_document_is_cached_until_the_models_change(client: TestClient) -> None:
    app = client.app
    first = app.openapi()  # type: ignore[attr-defined]
    assert app.openapi() is first  # type: ignore[attr-defined]
    name = "vowels-lstm"
    assert client.post(f"/v2/repository/models/{name}/unload", headers=AUTH).status_code == 200
    try:
        paths = client.get("/openapi.json").json()["paths"]
        assert f"/v2/models/{name}/infer" not in paths
        assert f"/v2/repository/models/{name}/load" in paths  # management: still there
        assert "/v2/models/fashion-cnn/infer" in paths
    finally:
        assert client.post(f"/v2/repository/models/{name}/load", headers=AUTH).status_code == 200
    assert f"/v2/models/{name}/infer" in client.get("/openapi.json").json()["paths"]
    assert app.openapi() is not first  # type: ignore[attr-defined]


def test_a_hot_swap_rebuilds_the_document(tmp_path: Path) -> None:
    """A new version published and picked up by a repository scan: the document describes
    it (and no longer the retired one) on its next request."""
    root = copy_models(tmp_path, "breast-cancer-ann")
    settings = Settings(
        model_repository=root, data_dir=tmp_path / "data", poll_interval=0, admin_token=TOKEN
    )
    with TestClient(create_app(settings)) as client:
        paths = client.get("/openapi.json").json()["paths"]
        assert "/v2/models/breast-cancer-ann/versions/1/infer" in paths
        assert publish_copy(root, "breast-cancer-ann") == 2
        assert client.post("/v2/repository/index", headers=AUTH).status_code == 200  # a scan
        spec = client.get("/openapi.json").json()
        assert "/v2/models/breast-cancer-ann/versions/2/infer" in spec["paths"]
        assert "/v2/models/breast-cancer-ann/versions/1/infer" not in spec["paths"]
        response = spec["components"]["schemas"]["breast-cancer-ann.V1PredictResponse"]
        assert response["properties"]["model_version"] == {"enum": ["2"]}


def test_a_bare_model_without_labels_is_documented_from_its_graph(tmp_path: Path) -> None:
    """A bare ``model.onnx`` (card derived from the graph: no labels, no reference batch):
    v1 predictions carry the raw outputs, and no example is shown."""
    root = tmp_path / "models"
    (root / "bare" / "1").mkdir(parents=True)
    onnx = (MODELS / "breast-cancer-ann" / "1" / "model.onnx").read_bytes()
    (root / "bare" / "1" / "model.onnx").write_bytes(onnx)
    settings = Settings(model_repository=root, data_dir=tmp_path / "data", poll_interval=0)
    with TestClient(create_app(settings)) as client:
        spec = client.get("/openapi.json").json()
        operation = spec["paths"]["/v1/models/bare:predict"]["post"]
        assert "example" not in operation["requestBody"]["content"]["application/json"]
        answer = client.post("/v1/models/bare:predict", json={"instances": [[0.5] * 30]})
        assert answer.status_code == 200, answer.text
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        validator(spec, ok).validate(answer.json())
        assert "outputs" in answer.json()["predictions"][0]


# -- what the fuzzer found --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/breast-cancer-ann:predict", {"instances": [[3e38] * 30]}),
        (
            "/v2/models/breast-cancer-ann/infer",
            {"inputs": [{"name": "features", "shape": [1, 30], "datatype": "FP32",
                         "data": [-3e38] * 30}]},
        ),
    ],
)  # fmt: skip
def test_inputs_that_overflow_the_model_are_400_not_null_probabilities(
    client: TestClient, path: str, body: dict[str, Any]
) -> None:
    """Finite float32 inputs far beyond the training data gave NaN outputs, sent as
    ``null`` probabilities with a 200."""
    answer = client.post(path, json=body)
    assert answer.status_code == 400, answer.text
    assert "not finite" in answer.json()["error"]


@pytest.mark.parametrize("datatype", [["FP32"], {"a": 1}])
def test_a_v2_datatype_that_is_no_string_is_400(client: TestClient, datatype: object) -> None:
    """An unhashable datatype (a list or object) was a 500 (TypeError in the codec)."""
    tensor = {"name": "features", "shape": [1, 30], "datatype": datatype, "data": [0.0] * 30}
    answer = client.post("/v2/models/breast-cancer-ann/infer", json={"inputs": [tensor]})
    assert answer.status_code == 400, answer.text
    assert "datatype" in answer.json()["error"]


def test_statuses_and_content_types_are_documented(spec: dict[str, Any]) -> None:
    """A feedback conflict (409) and the metrics' text format were undocumented; the headers
    the prediction routes read say what they accept."""
    assert "409" in spec["paths"]["/v1/models/{model_name}/feedback"]["post"]["responses"]
    assert "409" in spec["paths"]["/v1/models/fashion-cnn/feedback"]["post"]["responses"]
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    infer = spec["paths"]["/v2/models/fashion-cnn/infer"]["post"]
    assert set(infer["responses"]["200"]["content"]) == {
        "application/json",
        "application/octet-stream",
    }
    headers = {p["name"]: p["schema"] for p in infer["parameters"] if p["in"] == "header"}
    assert headers["X-Request-Timeout-Ms"]["pattern"] == "^[0-9]*[1-9][0-9]*$"
    assert headers["Inference-Header-Content-Length"]["pattern"] == "^[0-9]+$"
