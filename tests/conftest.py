"""Test layout (a module's tests are found by its layer):

    unit/<package>/   pure, in-process: modelrepo, service's parts, the prediction-log stores
    api/              the whole service in-process over ASGI (TestClient), no server
    server/           a real ``python -m service`` on 127.0.0.1 (marker ``server``)
    deploy/           compose, Prometheus and Grafana files; promtool and a real Prometheus
    training/         trains real networks (marker ``slow``)
    support/          shared helpers

``pytest -m "not server and not slow"`` (``make test-fast``) runs the fast part alone.
Markers are applied here by folder, and ``server`` to any test that starts PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import require_fashion_mnist

HERE = Path(__file__).parent
BY_FOLDER = {"server": "server", "deploy": "server", "training": "slow"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.path)).relative_to(HERE).parts[0]
        marker = BY_FOLDER.get(folder)
        if marker is not None:
            item.add_marker(marker)
        callspec = getattr(item, "callspec", None)
        uses = set(getattr(item, "fixturenames", ()))
        if "postgres_server" in uses or (callspec is not None and "postgres" in callspec.id):
            item.add_marker("server")


@pytest.fixture
def fashion_mnist() -> None:
    require_fashion_mnist()
