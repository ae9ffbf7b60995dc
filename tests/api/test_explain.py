"""``POST /v1/models/{m}:explain`` in-process: the prediction with attributions shaped like the
input for each committed model, the baseline's origin, the sample cap, bad input, a
regression graph, and the explain queue's own admission."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from modelrepo import MODEL_FILE, ExplainBaseline, read_card, scan
from service.app import create_app
from service.errors import Overloaded
from service.runtime.explain import ExplainQueue
from service.settings import Settings
from tests.support import samples
from tests.support.onnx_helpers import tiny_classifier
from tests.support.paths import MODELS
from tests.support.repo_tools import copy_models, publish_copy


def client(repository: Path, data: Path, **settings: Any) -> TestClient:
    app = create_app(
        Settings(model_repository=repository, data_dir=data, poll_interval=0, **settings)
    )
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with client(MODELS, tmp_path_factory.mktemp("data"), prediction_log=False) as c:
        yield c


IMAGE = samples.images(1)[0]
SEQUENCE = samples.sequences((9,))[0]
ROW = samples.rows(1)[0]


def explain(c: TestClient, model: str, body: dict[str, Any], path: str = "") -> Any:
    return c.post(f"/v1/models/{model}{path}:explain", content=orjson.dumps(body))


def test_tabular_attributions_per_feature_and_the_same_prediction(api: TestClient) -> None:
    body = {"instances": samples.rows(3)[[0, 2]].tolist()}  # not saturated
    answer = explain(api, "breast-cancer-ann", body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    predicted = api.post("/v1/models/breast-cancer-ann:predict", json=body).json()["predictions"]
    assert got["method"] == "occlusion" and got["parts"] == "features"
    assert got["samples"] == 2 * 31
    # committed cards predate the stored baseline: derived from the drift deciles
    assert got["baseline"]["origin"] == "derived"
    assert "deciles" in got["baseline"]["description"]
    for item, prediction in zip(got["explanations"], predicted, strict=True):
        assert item["label"] == prediction["label"] == item["target"]
        assert item["probabilities"] == pytest.approx(prediction["probabilities"], abs=1e-6)
        assert item["score"] == pytest.approx(prediction["probabilities"][item["label"]])
        assert len(item["attributions"]) == 30 and len(item["feature_names"]) == 30
        assert any(abs(a) > 1e-6 for a in item["attributions"])


def test_image_heat_map_has_the_image_shape_and_patch_blocks(api: TestClient) -> None:
    answer = explain(api, "fashion-cnn", {"instances": [IMAGE.tolist()]})
    assert answer.status_code == 200, answer.text
    item = answer.json()["explanations"][0]
    heat = np.asarray(item["attributions"])
    assert heat.shape == (28, 28) and item["patch_size"] == 4
    assert answer.json()["samples"] == 49 + 1
    assert np.all(heat[:4, :4] == heat[0, 0])  # one value per 4 x 4 patch
    asked = explain(
        api, "fashion-cnn", {"instances": [IMAGE.tolist()], "parameters": {"patch_size": 7}}
    )
    assert asked.json()["samples"] == 16 + 1 and asked.json()["explanations"][0]["patch_size"] == 7


def test_sequence_per_step_per_channel_and_per_cell(api: TestClient) -> None:
    # two lengths in one request: one batched run per length, answers in instance order
    short = samples.sequences((5,), seed=3)[0]
    body = {"instances": [SEQUENCE.tolist(), short.tolist()]}
    answer = explain(api, "vowels-lstm", body, "/versions/1")
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["samples"] == (9 + 12 + 9 * 12 + 1) + (5 + 12 + 5 * 12 + 1)
    first, second = got["explanations"]
    assert np.asarray(first["attributions"]).shape == (9, 12)
    assert len(first["time_steps"]) == 9 and len(first["channels"]) == 12
    assert np.asarray(second["attributions"]).shape == (5, 12)
    predicted = api.post("/v1/models/vowels-lstm:predict", json=body).json()["predictions"]
    assert [e["label"] for e in got["explanations"]] == [p["label"] for p in predicted]


def test_the_cap_coarsens_patches_drops_cells_then_refuses(tmp_path: Path) -> None:
    with client(MODELS, tmp_path, prediction_log=False, explain_max_samples=40) as c:
        image = explain(c, "fashion-cnn", {"instances": [IMAGE.tolist()]})
        assert image.status_code == 200, image.text
        assert image.json()["explanations"][0]["patch_size"] == 8  # 16 + 1 samples
        sequence = explain(c, "vowels-lstm", {"instances": [SEQUENCE.tolist()]})
        assert sequence.status_code == 200
        assert sequence.json()["explanations"][0]["attributions"] is None  # cells left out
        assert len(sequence.json()["explanations"][0]["time_steps"]) == 9
        rows = explain(c, "breast-cancer-ann", {"instances": [ROW.tolist()] * 2})
        assert rows.status_code == 413
        assert "NNSERVE_EXPLAIN_MAX_SAMPLES" in rows.json()["error"]


@pytest.mark.parametrize(
    ("model", "body", "words"),
    [
        ("breast-cancer-ann", {"instances": [[1.0] * 29]}, "shape"),
        ("breast-cancer-ann", {"instances": [ROW.tolist()], "parameters": {"patch_size": 2}},
         "patch_size"),
        ("fashion-cnn", {"instances": [IMAGE.tolist()], "parameters": {"patch_size": "4"}},
         "patch_size"),
        ("fashion-cnn", {"instances": [IMAGE.tolist()], "parameters": {"patch_size": 29}},
         "1 to 28"),
        ("fashion-cnn", {"instances": [IMAGE.tolist()], "parameters": []}, "parameters"),
        ("fashion-cnn", {"instances": [(IMAGE + 300).tolist()]}, "within"),
        ("vowels-lstm", {"instances": []}, "instances"),
    ],
)  # fmt: skip
def test_bad_input_is_a_400_naming_the_field(
    api: TestClient, model: str, body: dict[str, Any], words: str
) -> None:
    answer = explain(api, model, body)
    assert answer.status_code == 400, answer.text
    assert words in answer.json()["error"]


def test_unknown_model_or_version_is_404(api: TestClient) -> None:
    assert explain(api, "nope", {"instances": [[1.0]]}).status_code == 404
    assert explain(api, "fashion-cnn", {"instances": [[1.0]]}, "/versions/9").status_code == 404


def test_metrics_and_protocol_label_keep_explanations_apart(api: TestClient) -> None:
    assert explain(api, "breast-cancer-ann", {"instances": [ROW.tolist()]}).status_code == 200
    text = api.get("/metrics").text
    assert 'nnserve_explain_duration_seconds_count{model="breast-cancer-ann",version="1"}' in text
    assert 'protocol="explain",version="1"' in text or 'protocol="explain"' in text
    # no prediction-side metric counts an explanation's perturbed samples
    assert 'nnserve_inferred_samples_total{model="breast-cancer-ann",version="1"} 62.0' not in text


def test_a_stored_baseline_is_used_and_said(tmp_path: Path) -> None:
    root = copy_models(tmp_path, "breast-cancer-ann")
    stored = ExplainBaseline(description="element-wise mean", shape=[30], data=ROW.tolist())
    publish_copy(
        root,
        "breast-cancer-ann",
        edit_card=lambda card: card.model_copy(update={"explain_baseline": stored}),
    )
    with client(root, tmp_path / "data", prediction_log=False, version_policy="all") as c:
        # the baseline is the instance itself: removing any one feature changes nothing
        got = explain(c, "breast-cancer-ann", {"instances": [ROW.tolist()]}).json()
        assert got["baseline"] == {"origin": "card", "description": "element-wise mean"}
        assert got["explanations"][0]["attributions"] == [0.0] * 30
        old = explain(c, "breast-cancer-ann", {"instances": [ROW.tolist()]}, "/versions/1")
        assert old.json()["baseline"]["origin"] == "derived"


def test_a_regression_graph_attributes_its_first_output(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "tiny" / "1"
    folder.mkdir(parents=True)
    weights = tiny_classifier(folder / MODEL_FILE)  # bare: served as regression, no labels
    rng = np.random.default_rng(0)  # tiny_classifier's draws: its weights, then its bias
    rng.standard_normal((4, 3))
    bias = rng.standard_normal(3).astype(np.float32)
    with client(tmp_path / "models", tmp_path / "data", prediction_log=False) as c:
        x = [1.0, -2.0, 0.5, 3.0]
        got = explain(c, "tiny", {"instances": [x]}).json()
    item = got["explanations"][0]
    assert item["target"] == "outputs[0]" and len(item["outputs"]) == 3
    assert got["baseline"]["origin"] == "derived"  # zeros: no training data known

    # by hand: the first output without feature j (set to 0)
    def first(v: np.ndarray) -> float:
        logits = v @ weights + bias
        e = np.exp(logits - logits.max())
        return float((e / e.sum())[0])

    want = []
    for j in range(4):
        removed = np.asarray(x, dtype=np.float32)
        removed[j] = 0.0
        want.append(first(np.asarray(x, dtype=np.float32)) - first(removed))
    assert item["attributions"] == pytest.approx(want, abs=1e-4)


def test_the_explain_queue_is_bounded_and_separate() -> None:
    async def scenario() -> None:
        queue = ExplainQueue(threads=1, waiting=1, max_samples=10)
        release = threading.Event()
        names: list[str] = []

        def blocked() -> str:
            names.append(threading.current_thread().name)
            release.wait(5)
            return "done"

        deadline = time.perf_counter() + 5
        running = asyncio.ensure_future(queue.run(blocked, deadline))
        waiting = asyncio.ensure_future(queue.run(blocked, deadline))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await queue.run(blocked, deadline)
        release.set()
        assert await running == await waiting == "done"
        assert all(n.startswith("explain") for n in names)
        queue.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("name", sorted(scan(MODELS)))
def test_every_committed_model_explains_its_reference_samples(api: TestClient, name: str) -> None:
    card = read_card(MODELS / name / str(scan(MODELS)[name][-1]))
    tensor = card.reference[0].inputs[0]
    instances = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
    answer = explain(api, name, {"instances": instances.tolist()})
    assert answer.status_code == 200, answer.text
    for item in answer.json()["explanations"]:
        if item["attributions"] is not None:
            assert np.asarray(item["attributions"]).shape == tuple(tensor.shape[1:])
        assert ("label" in item) == bool(card.labels)
