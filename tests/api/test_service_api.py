"""In-process ASGI tests: every endpoint and every kind of bad input, no server needed."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modelrepo import scan
from service.app import create_app
from service.settings import Settings
from tests.support import samples
from tests.support.onnx_helpers import session
from tests.support.paths import MODELS

V1 = "/v1/models/{}:predict"
V2 = "/v2/models/{}/infer"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(
        create_app(
            Settings(
                model_repository=MODELS,
                max_body_bytes=200_000,
                data_dir=tmp_path_factory.mktemp("data"),
            )
        ),
        raise_server_exceptions=False,
    ) as c:
        yield c


def direct(name: str, batch: np.ndarray) -> np.ndarray:
    return session(MODELS / name / "1" / "model.onnx").run(
        ["probabilities"], {session(MODELS / name / "1" / "model.onnx").get_inputs()[0].name: batch}
    )[0]


def v2_body(name: str, array: np.ndarray, datatype: str = "FP32") -> dict[str, object]:
    return {
        "inputs": [
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "data": array.ravel().tolist(),
            }
        ]
    }


def assert_error(response: object, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"}
    for fragment in fragments:
        assert fragment in body["error"], body["error"]


# -- health and metadata ---------------------------------------------------------------------
def test_server_metadata_and_health(client: TestClient) -> None:
    assert client.get("/v2").json() == {
        "name": "nnserve",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "model_repository"],
    }
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").json() == {"ready": True}


@pytest.mark.parametrize(
    ("name", "input_name", "shape"),
    [
        ("breast-cancer-ann", "features", [-1, 30]),
        ("fashion-cnn", "images", [-1, 28, 28]),
        ("vowels-lstm", "sequences", [-1, -1, 12]),
    ],
)
def test_model_metadata(client: TestClient, name: str, input_name: str, shape: list[int]) -> None:
    for path in (f"/v2/models/{name}", f"/v2/models/{name}/versions/1"):
        meta = client.get(path).json()
        assert meta["name"] == name and meta["versions"] == ["1"]
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": input_name, "datatype": "FP32", "shape": shape}]
        assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    for path in (f"/v2/models/{name}/ready", f"/v2/models/{name}/versions/1/ready"):
        assert client.get(path).json() == {"name": name, "ready": True}
    card = client.get(f"/v1/models/{name}").json()
    assert card["version"] == "1" and card["card"]["metrics"]["accuracy"] > 0.9
    assert "reference" not in card["card"]


def test_v1_model_list(client: TestClient) -> None:
    assert client.get("/v1/models").json() == {"models": sorted(scan(MODELS))}


def test_openapi_documents_both_protocols(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/v2/models/{model_name}/infer" in spec["paths"]
    assert "/v1/models/{model_name}:predict" in spec["paths"]
    body = spec["paths"]["/v2/models/{model_name}/infer"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["$ref"] == "#/components/schemas/V2InferRequest"
    assert {"V2InferRequest", "V1PredictRequest"} <= set(spec["components"]["schemas"])
    assert client.get("/docs").status_code == 200


# -- predictions equal a direct onnxruntime run ----------------------------------------------
def test_v1_rows_and_feature_objects(client: TestClient) -> None:
    rows = samples.rows(3)
    names = client.get("/v1/models/breast-cancer-ann").json()["card"]["feature_names"]
    as_objects = [dict(zip(names, row.tolist(), strict=True)) for row in rows]
    want = direct("breast-cancer-ann", rows)
    for instances in (rows.tolist(), as_objects, [as_objects[0], *rows[1:].tolist()]):
        r = client.post(V1.format("breast-cancer-ann"), json={"instances": instances})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == "breast-cancer-ann" and body["model_version"] == "1"
        assert body["id"] == r.headers["x-request-id"]
        for prediction, probs in zip(body["predictions"], want, strict=True):
            assert list(prediction["probabilities"]) == ["malignant", "benign"]
            np.testing.assert_allclose(
                list(prediction["probabilities"].values()), probs, rtol=1e-6, atol=1e-7
            )
            assert prediction["label"] == ["malignant", "benign"][int(probs.argmax())]


def test_v1_images(client: TestClient) -> None:
    batch = samples.images(2)
    r = client.post(V1.format("fashion-cnn"), json={"instances": batch.astype(int).tolist()})
    got = [list(p["probabilities"].values()) for p in r.json()["predictions"]]
    np.testing.assert_allclose(got, direct("fashion-cnn", batch), rtol=1e-5, atol=1e-6)


def test_v1_sequences_of_different_lengths_keep_their_order(client: TestClient) -> None:
    seqs = samples.sequences((7, 20, 7, 3))
    r = client.post(V1.format("vowels-lstm"), json={"instances": [s.tolist() for s in seqs]})
    assert r.status_code == 200, r.text
    got = [list(p["probabilities"].values()) for p in r.json()["predictions"]]
    want = [direct("vowels-lstm", s[None])[0] for s in seqs]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("datatype", ["FP32", "FP64", "FP16", "INT32", "INT64", "UINT8"])
def test_v2_json_accepts_numeric_datatypes(client: TestClient, datatype: str) -> None:
    batch = samples.images(2)
    r = client.post(V2.format("fashion-cnn"), json=v2_body("images", batch, datatype))
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["probabilities"]["shape"] == [2, 10]
    assert outputs["probabilities"]["datatype"] == "FP32"
    np.testing.assert_allclose(
        np.reshape(outputs["probabilities"]["data"], (2, 10)),
        direct("fashion-cnn", batch),
        rtol=1e-5,
        atol=1e-6,
    )


def test_v2_id_parameters_and_requested_outputs(client: TestClient) -> None:
    body = {
        **v2_body("features", samples.rows(2)),
        "id": "my-id-7",
        "parameters": {"anything": 1},
        "outputs": [{"name": "probabilities"}],
    }
    r = client.post("/v2/models/breast-cancer-ann/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "my-id-7"
    assert [o["name"] for o in r.json()["outputs"]] == ["probabilities"]


def binary_request(
    name: str, array: np.ndarray, datatype: str = "FP32", binary_output: bool = True
) -> tuple[bytes, dict[str, str]]:
    raw = array.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": binary_output}}],
        }
    ).encode()
    return head + raw, {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }


def test_v2_binary_in_and_out(client: TestClient) -> None:
    batch = samples.images(3)
    for datatype, array in (("FP32", batch), ("UINT8", batch.astype(np.uint8))):
        content, headers = binary_request("images", array, datatype)
        r = client.post(V2.format("fashion-cnn"), content=content, headers=headers)
        assert r.status_code == 200, r.text
        n = int(r.headers["inference-header-content-length"])
        head = json.loads(r.content[:n])
        (output,) = head["outputs"]
        assert output["parameters"]["binary_data_size"] == 3 * 10 * 4
        probs = np.frombuffer(r.content[n:], dtype="<f4").reshape(3, 10)
        np.testing.assert_allclose(probs, direct("fashion-cnn", batch), rtol=1e-5, atol=1e-6)


def test_v2_binary_output_for_json_input(client: TestClient) -> None:
    body = {**v2_body("features", samples.rows(1)), "parameters": {"binary_data_output": True}}
    r = client.post(V2.format("breast-cancer-ann"), json=body)
    n = int(r.headers["inference-header-content-length"])
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(r.content[:n])["outputs"]]
    assert sizes == [8, 8] and len(r.content) == n + 16


# -- bad input: a clear 4xx, never a 500 ------------------------------------------------------
GOOD_ROW = [1.0] * 30
BAD_V1 = [
    ("breast-cancer-ann", b"{not json", 400, ["malformed JSON"]),
    ("breast-cancer-ann", b"[1, 2]", 400, ["JSON object with 'instances'", "got list"]),
    ("breast-cancer-ann", b'{"inputs": []}', 400, ["needs 'instances'"]),
    ("breast-cancer-ann", b'{"instances": 5}', 400, ["'instances' must be a list"]),
    ("breast-cancer-ann", b'{"instances": []}', 400, ["'instances' is empty"]),
    (
        "breast-cancer-ann",
        json.dumps({"instances": [[1.0] * 29]}).encode(),
        400,
        ["shape [30]", "got instances of shape [29]"],
    ),
    (
        "breast-cancer-ann",
        json.dumps({"instances": [GOOD_ROW, [1.0] * 29]}).encode(),
        400,
        ["inconsistent lengths"],
    ),
    (
        "breast-cancer-ann",
        json.dumps({"instances": [["a"] * 30]}).encode(),
        400,
        ["expected numbers, got strings"],
    ),
    (
        "breast-cancer-ann",
        json.dumps({"instances": [[True, *GOOD_ROW[1:]]]}).encode(),
        400,
        ["expected numbers, got a boolean"],
    ),
    ("breast-cancer-ann", b'{"instances": [[NaN]]}', 400, ["malformed JSON", "NaN"]),
    ("breast-cancer-ann", json.dumps({"instances": [[1e300] * 30]}).encode(), 400, ["finite"]),
    (
        "breast-cancer-ann",
        json.dumps({"instances": [{"radius": 1}]}).encode(),
        400,
        ["unknown feature names ['radius']"],
    ),
    (
        "breast-cancer-ann",
        json.dumps({"instances": [{"mean radius": 1}]}).encode(),
        400,
        ["missing features", "mean texture"],
    ),
    (
        "fashion-cnn",
        json.dumps({"instances": [[[300] * 28] * 28]}).encode(),
        400,
        ["within [0.0, 255.0]", "max 300"],
    ),
    (
        "fashion-cnn",
        json.dumps({"instances": [[[-1] * 28] * 28]}).encode(),
        400,
        ["within [0.0, 255.0]", "min -1"],
    ),
    (
        "fashion-cnn",
        json.dumps({"instances": [[[0] * 27] * 28]}).encode(),
        400,
        ["shape [28, 28]", "[28, 27]"],
    ),
    (
        "vowels-lstm",
        json.dumps({"instances": [[[1.0] * 11] * 5]}).encode(),
        400,
        ["instance 0", "12 channels", "[5, 11]"],
    ),
    ("vowels-lstm", json.dumps({"instances": [[]]}).encode(), 400, ["instance 0"]),
    ("no-such-model", b'{"instances": [[1]]}', 404, ["unknown model 'no-such-model'"]),
]


@pytest.mark.parametrize(("name", "body", "status", "fragments"), BAD_V1)
def test_v1_bad_input(
    client: TestClient, name: str, body: bytes, status: int, fragments: list[str]
) -> None:
    assert_error(client.post(V1.format(name), content=body), status, *fragments)


def image_tensor(**changes: object) -> dict[str, object]:
    tensor = {"name": "images", "shape": [1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}
    return {"inputs": [{**tensor, **changes}]}


BAD_V2 = [
    (b"{oops", 400, ["malformed JSON"]),
    (b'"text"', 400, ["JSON object with 'inputs'", "got str"]),
    (b"{}", 400, ["needs 'inputs'"]),
    (b'{"inputs": []}', 400, ["needs 'inputs'"]),
    (
        json.dumps(image_tensor(name="pixels")).encode(),
        400,
        ["unknown input 'pixels'", "takes 'images'"],
    ),
    (json.dumps(image_tensor(shape=[1, 28, 27])).encode(), 400, ["needs 756 values, got 784"]),
    (
        json.dumps(image_tensor(shape=[2, 392])).encode(),
        400,
        ["expected shape [N, 28, 28], got [2, 392]"],
    ),
    (json.dumps(image_tensor(shape="1x28x28")).encode(), 400, ["'shape' must be a list"]),
    (
        json.dumps(image_tensor(datatype="BYTES")).encode(),
        400,
        ["datatype 'BYTES' is not accepted", "FP32"],
    ),
    (json.dumps(image_tensor(datatype="BOOL")).encode(), 400, ["datatype 'BOOL'"]),
    (json.dumps(image_tensor(data=["x"] * 784)).encode(), 400, ["expected numbers, got strings"]),
    (json.dumps(image_tensor(data=[False] * 784)).encode(), 400, ["got a boolean"]),
    (json.dumps(image_tensor(data=[256.0] * 784)).encode(), 400, ["within [0.0, 255.0]"]),
    (json.dumps(image_tensor(shape=[0, 28, 28], data=[])).encode(), 400, ["holds no values"]),
    (
        json.dumps(image_tensor(datatype="INT32", data=[0.5] * 784)).encode(),
        400,
        ["INT32 but the data has fractions"],
    ),
    (
        json.dumps(image_tensor(datatype="UINT8", data=[-1] * 784)).encode(),
        400,
        ["outside the range of UINT8"],
    ),
    (json.dumps(image_tensor(data=None)).encode(), 400, ["expected an array"]),
    (
        json.dumps({**image_tensor(), "outputs": [{"name": "nope"}]}).encode(),
        400,
        ["unknown output 'nope'"],
    ),
]


@pytest.mark.parametrize(("body", "status", "fragments"), BAD_V2)
def test_v2_bad_input(client: TestClient, body: bytes, status: int, fragments: list[str]) -> None:
    assert_error(client.post(V2.format("fashion-cnn"), content=body), status, *fragments)


def test_v2_binary_inconsistencies(client: TestClient) -> None:
    batch = samples.images(1)
    content, headers = binary_request("images", batch)
    cases = [
        (
            {**headers, "Inference-Header-Content-Length": str(len(content) + 5)},
            content,
            ["Inference-Header-Content-Length is", f"body has {len(content)} bytes"],
        ),
        ({**headers, "Inference-Header-Content-Length": "abc"}, content, ["must be an integer"]),
        (headers, content[:-4], ["binary_data_size is 3136 but 3132 bytes follow"]),
        (headers, content + b"1234", ["binary_data_size is 3136 but 3140 bytes follow"]),
        ({"Content-Type": "application/json"}, content, ["malformed JSON"]),
    ]
    for hdrs, body, fragments in cases:
        assert_error(
            client.post(V2.format("fashion-cnn"), content=body, headers=hdrs), 400, *fragments
        )
    # a binary NaN cannot hide from the finiteness check
    nan = batch.copy()
    nan[0, 0, 0] = np.nan
    content, headers = binary_request("images", nan)
    assert_error(
        client.post(V2.format("fashion-cnn"), content=content, headers=headers), 400, "finite"
    )


def test_unknown_models_versions_and_routes(client: TestClient) -> None:
    assert_error(client.get("/v2/models/nope"), 404, "unknown model 'nope'")
    assert_error(client.get("/v2/models/fashion-cnn/versions/9"), 404, "no version 9")
    assert_error(client.get("/v2/models/fashion-cnn/versions/01"), 404, "not a positive integer")
    assert_error(
        client.post("/v2/models/fashion-cnn/versions/x/infer", json={}),
        404,
        "'x' is not a positive integer",
    )
    assert_error(client.get("/v2/models/nope/ready"), 404, "unknown model")
    assert_error(client.get("/v1/models/nope"), 404, "unknown model")
    assert_error(client.get("/no/such/route"), 404, "Not Found")
    assert_error(client.get(V2.format("fashion-cnn")), 405, "Method Not Allowed")


def test_body_over_the_limit_is_413_before_it_is_read(client: TestClient) -> None:
    big = json.dumps({"instances": [[[0] * 28] * 28] * 200}).encode()
    assert len(big) > 200_000
    assert_error(client.post(V1.format("fashion-cnn"), content=big), 413, "exceeds the limit")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(100):
            yield b" " * 10_000

    assert_error(
        client.post(V1.format("fashion-cnn"), content=chunks()), 413, "exceeds the limit of 200000"
    )


def test_service_still_serves_after_every_error(client: TestClient) -> None:
    for name, body, _, _ in BAD_V1:
        client.post(V1.format(name), content=body)
    for body, _, _ in BAD_V2:
        client.post(V2.format("fashion-cnn"), content=body)
    batch = samples.images(1)
    r = client.post(V2.format("fashion-cnn"), json=v2_body("images", batch))
    probs = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    np.testing.assert_allclose(
        np.reshape(probs["data"], (1, 10)), direct("fashion-cnn", batch), rtol=1e-5, atol=1e-6
    )
    metrics = client.get("/metrics").text
    assert 'nnserve_requests_total{code="500"' not in metrics
