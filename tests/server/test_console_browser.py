"""The web console and the API docs in a real browser: Debian's headless Chromium driven by
Playwright (its own browser download is never used). Every request the pages make is
recorded and must stay on 127.0.0.1; no console error is allowed. Screenshots go to the
test's tmp folder (``--basetemp`` to keep them)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from modelrepo import scan
from tests.support.paths import MODELS
from tests.support.server import Server, running_server

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MODELS_SHOWN = ("breast-cancer-ann", "fashion-cnn", "vowels-lstm")
#: what the explanation is drawn as, per model
FIGURE = {"breast-cancer-ann": "#explanation .bars li", "fashion-cnn": "#heat-map",
          "vowels-lstm": "#time-strip"}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (scripts/system-packages.sh)")
    folder = tmp_path_factory.mktemp("console")
    with running_server(MODELS, folder, NNSERVE_WORKERS="1") as running:
        yield running


class Browser:
    """One page, with every request and console error it produced."""

    def __init__(self, page: sync_api.Page) -> None:
        self.page = page
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def check_local(self) -> None:
        outside = [
            u
            for u in self.requests
            if urlsplit(u).scheme not in ("blob", "data") and urlsplit(u).hostname != "127.0.0.1"
        ]
        assert not outside, f"requests left the machine: {outside}"
        assert not self.errors, f"console errors: {self.errors}"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = chromium.new_page(viewport={"width": 1200, "height": 900})
            page.set_default_timeout(20_000)
            yield Browser(page)
        finally:
            chromium.close()


def _predicted(server: Server, model: str, instance: object) -> str:
    answer = httpx.post(
        f"{server.url}/v1/models/{model}:predict", content=orjson.dumps({"instances": [instance]})
    )
    label: str = answer.json()["predictions"][0]["label"]
    return label


def _open(page: sync_api.Page, url: str, model: str) -> None:
    """The console, with ``model`` chosen and its card and samples shown."""
    if not page.url.startswith(url):
        page.goto(f"{url}/")
        page.wait_for_selector("#model option", state="attached")
    page.select_option("#model", model)
    page.wait_for_selector(f"#card h3:has-text('{model} version ')")
    page.wait_for_selector("#sample option", state="attached")


def test_each_model_predicts_and_explains_in_the_page(
    server: Server, browser: Browser, tmp_path: Path
) -> None:
    page = browser.page
    for model in MODELS_SHOWN:
        _open(page, server.url, model)
        page.wait_for_selector("#card img[src^='blob:']")  # learning curve, confusion matrix
        instance = orjson.loads(page.input_value("#instance"))
        page.focus("#send")
        page.keyboard.press("Enter")  # keyboard, not a click
        page.wait_for_selector(FIGURE[model])
        assert page.text_content("#predicted-label") == _predicted(server, model, instance)
        page.screenshot(path=tmp_path / f"console-{model}.png", full_page=True)
    for model in sorted(set(scan(MODELS)) - set(MODELS_SHOWN)):  # any other, e.g. a forecaster
        _open(page, server.url, model)
        page.click("#send")
        page.wait_for_selector("#explanation canvas, #explanation .bars li")
    actions = page.locator("button, a, input[type=submit]")
    assert actions.filter(has_text=re.compile("load|unload|index", re.I)).count() == 0
    # the live view: rates once two scrapes are in
    page.wait_for_function(
        "() => [...document.querySelectorAll('#live tbody tr')].some("
        "r => r.cells[0].textContent === 'fashion-cnn' && r.cells[4].textContent !== '…')",
        timeout=15_000,
    )
    page.screenshot(path=tmp_path / "console-live.png", full_page=True)
    assert not [u for u in browser.requests if "/v2/repository" in u]  # no management call
    browser.check_local()


def test_an_uploaded_image_is_made_28_by_28_and_explained(
    server: Server, browser: Browser, tmp_path: Path
) -> None:
    page = browser.page
    _open(page, server.url, "fashion-cnn")
    page.wait_for_selector("#upload-row:not([hidden])")
    page.set_input_files("#upload", str(MODELS / "fashion-cnn" / "1" / "learning_curve.png"))
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('28')")
    image = orjson.loads(page.input_value("#instance"))
    assert len(image) == 28 and all(len(row) == 28 for row in image)
    assert all(0 <= v <= 255 for row in image for v in row)
    page.click("#send")
    page.wait_for_selector("#heat-map")
    assert page.text_content("#predicted-label") == _predicted(server, "fashion-cnn", image)
    page.screenshot(path=tmp_path / "console-upload.png", full_page=True)
    browser.check_local()


@pytest.mark.parametrize(("path", "rendered"), [("/docs", ".swagger-ui .opblock"),
                                                ("/redoc", ".redoc-wrap h1")])  # fmt: skip
def test_api_docs_render_offline(
    server: Server, browser: Browser, tmp_path: Path, path: str, rendered: str
) -> None:
    page = browser.page
    page.goto(f"{server.url}{path}")
    page.wait_for_selector(rendered)
    page.screenshot(path=tmp_path / f"docs{path.replace('/', '-')}.png")
    browser.check_local()
