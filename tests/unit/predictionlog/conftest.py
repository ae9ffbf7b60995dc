"""The prediction-log tests' stores: an empty one per backend (SQLite, and a real
PostgreSQL started once per test module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from predictionlog import Store, open_store
from tests.support.postgres import PostgresServer, require_psycopg, running_postgres


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    require_psycopg()
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty store, once per backend (SQLite's folder not made yet)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'log' / 'predictions.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()
