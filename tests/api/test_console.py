"""The console's routes in-process: the page and its assets (nothing but local addresses in
them), the offline docs pages, the plots and samples of a served version with names checked,
and what stays open or needs a key when API keys are on. The page itself is driven in a real
browser by ``tests/server/test_console_browser.py``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from modelrepo import ModelCard, read_card
from service.app import create_app
from service.console.routes import PAGE
from service.keys import digest, new_key
from service.settings import Settings
from tests.support.paths import MODELS

PLOT = "/console/api/models/{}/versions/{}/plots/{}"
EXTERNAL = re.compile(rb"https?://(?!127\.0\.0\.1)[^\s\"')]+")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        model_repository=MODELS,
        data_dir=tmp_path_factory.mktemp("data"),
        poll_interval=0,
        prediction_log=False,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_the_page_and_its_assets_name_no_outside_address(api: TestClient) -> None:
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for path in sorted(PAGE.iterdir()):
        assert not EXTERNAL.findall(path.read_bytes()), path.name
    for asset in ("console.js", "console.css"):
        assert api.get(f"/console/static/{asset}").status_code == 200
    for wrong in ("index.htm", "..%2Froutes.py", "%2e%2e", "console.js.map"):
        assert api.get(f"/console/static/{wrong}").status_code == 404


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_pages_load_their_assets_from_the_service(api: TestClient, path: str) -> None:
    page = api.get(path)
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith(("/console/docs/", "/openapi.json")) for s in sources)
    for source in sources:
        if source.startswith("/console/docs/"):
            asset = api.get(source)
            assert asset.status_code == 200 and len(asset.content) > 1000
    assert b"cdn.redoc.ly" not in api.get("/console/docs/redoc.standalone.js").content


def test_plots_of_a_served_version_and_nothing_else(api: TestClient) -> None:
    for model in ("breast-cancer-ann", "fashion-cnn", "vowels-lstm"):
        for plot in ("learning_curve.png", "confusion_matrix.png"):
            answer = api.get(PLOT.format(model, 1, plot))
            assert answer.status_code == 200, answer.text
            assert answer.content.startswith(b"\x89PNG")
    for model, version, plot in [
        ("fashion-cnn", "1", "model.onnx"),
        ("fashion-cnn", "1", "model.json"),
        ("fashion-cnn", "1", "..%2F..%2Fbreast-cancer-ann%2F1%2Fmodel.json"),
        ("fashion-cnn", "2", "learning_curve.png"),
        ("..", "1", "learning_curve.png"),
        ("no-such-model", "1", "learning_curve.png"),
    ]:
        answer = api.get(PLOT.format(model, version, plot))
        assert answer.status_code == 404, (model, version, plot)
        assert "error" in answer.json()


def test_samples_are_the_cards_reference_batch(api: TestClient) -> None:
    answer = api.get("/console/api/models/vowels-lstm/versions/1").json()["samples"]
    assert [s["shape"] for s in answer] == [[7, 12], [18, 12], [18, 12], [29, 12]]
    assert all(len(s["data"]) == s["shape"][0] * 12 for s in answer)
    images = api.get("/console/api/models/fashion-cnn/versions/1").json()
    card = images["card"]  # the version's own card, as its model.json has it
    assert (card["name"], card["version"]) == ("fashion-cnn", 1)
    assert ModelCard.model_validate(card) == read_card(MODELS / "fashion-cnn" / "1")
    assert images["plots"] == ["learning_curve.png", "confusion_matrix.png"]
    images = images["samples"]
    assert len(images) == 4 and all(len(s["data"]) == 784 for s in images)


def test_with_api_keys_the_page_is_open_and_its_data_needs_a_key(tmp_path: Path) -> None:
    key = new_key()
    settings = Settings(
        model_repository=MODELS,
        data_dir=tmp_path,
        poll_interval=0,
        prediction_log=False,
        api_keys=f"alice:{digest(key.encode()).hex()}",
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/").status_code == 200
        assert client.get("/console/static/console.js").status_code == 200
        plot = PLOT.format("fashion-cnn", 1, "learning_curve.png")
        for guarded in (plot, "/console/api/models/fashion-cnn/versions/1", "/docs"):
            assert client.get(guarded).status_code == 401, guarded
        keyed = client.get(plot, headers={"Authorization": f"Bearer {key}"})
        assert keyed.status_code == 200
