"""A user's own models in the running service: an ONNX file imported with and without
samples (served through v1, v2 and tritonclient, with feedback), and a bare ``model.onnx``
(served with a derived card, or refused, by setting)."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from modelrepo.__main__ import main as modelrepo_main
from tests.support.metrics_text import parse
from tests.support.onnx_helpers import session, tiny_classifier
from tests.support.server import running_server

X = (np.arange(12, dtype=np.float32).reshape(3, 4) - 6) / 3


def imported_repository(tmp_path: Path) -> tuple[Path, Path]:
    repo, source = tmp_path / "models", tmp_path / "mine.onnx"
    repo.mkdir()
    tiny_classifier(source)
    np.save(tmp_path / "x.npy", X)
    common = ["--labels", "cat,dog,owl", "--repository", str(repo)]
    assert modelrepo_main(["import", str(source), "--name", "mine", *common]) == 0
    sampled = ["--name", "mine-sampled", "--samples", str(tmp_path / "x.npy"), *common]
    assert modelrepo_main(["import", str(source), *sampled]) == 0
    (repo / "bare" / "1").mkdir(parents=True)
    (repo / "bare" / "1" / "model.onnx").write_bytes(source.read_bytes())
    return repo, source


def test_imported_models_serve_on_every_protocol_and_take_feedback(tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    repo, source = imported_repository(tmp_path)
    want = session(source).run(["probabilities"], {"x": X})[0]
    labels = ["cat", "dog", "owl"]
    with running_server(repo, tmp_path, NNSERVE_WORKERS="1") as server:
        for name in ("mine", "mine-sampled"):
            v1 = httpx.post(
                f"{server.url}/v1/models/{name}:predict", json={"instances": X.tolist()}
            ).json()["predictions"]
            assert [p["label"] for p in v1] == [labels[i] for i in want.argmax(1)]
            got = np.array([[p["probabilities"][label] for label in labels] for p in v1])
            np.testing.assert_allclose(got, want, atol=1e-6)
            body = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32",
                                "data": X.ravel().tolist()}]}  # fmt: skip
            v2 = httpx.post(f"{server.url}/v2/models/{name}/infer", json=body).json()
            np.testing.assert_allclose(np.reshape(v2["outputs"][0]["data"], (3, 3)), want, 1e-6)
            client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
            tensor = httpclient.InferInput("x", [3, 4], "FP32")
            tensor.set_data_from_numpy(X, binary_data=True)
            result = client.infer(name, [tensor])
            np.testing.assert_allclose(result.as_numpy("probabilities"), want, atol=1e-6)
            client.close()
            feedback = httpx.post(
                f"{server.url}/v1/models/{name}/feedback",
                json={"id": v1[0]["id"], "label": "owl"},
            )
            assert feedback.json() == {"recorded": 1, "duplicates": 0}
        meta = httpx.get(f"{server.url}/v1/models/mine").json()
        assert meta["card"]["provenance"]["origin"] == "imported"
        # the bare model.onnx: served, outputs as they are, marked as derived
        bare = httpx.post(f"{server.url}/v1/models/bare:predict", json={"instances": X.tolist()})
        np.testing.assert_allclose(
            [p["outputs"] for p in bare.json()["predictions"]], want, atol=1e-6
        )
        info = [
            dict(labels)
            for (name, labels), _ in parse(httpx.get(f"{server.url}/metrics").text).items()
            if name == "nnserve_model_info"
        ]
        assert {(i["model"], i["origin"]) for i in info} == {
            ("mine", "imported"),
            ("mine-sampled", "imported"),
            ("bare", "derived"),
        }
    assert "from a bare model.onnx" in server.logs()  # the warning


def test_a_bare_model_is_refused_with_its_reason_when_set(tmp_path: Path) -> None:
    repo, _ = imported_repository(tmp_path)
    with running_server(
        repo, tmp_path, NNSERVE_WORKERS="1", NNSERVE_BARE_MODELS="refuse"
    ) as server:
        r = httpx.get(f"{server.url}/v2/models/bare/ready")
        assert r.status_code == 503
        assert httpx.get(f"{server.url}/v2/models/mine/ready").status_code == 200
        metrics = parse(httpx.get(f"{server.url}/metrics").text)
        key = ("nnserve_model_load_failures_total",
               frozenset({("model", "bare"), ("reason", "no_card")}))  # fmt: skip
        assert metrics[key] == 1
    assert "python -m modelrepo import" in server.logs()
