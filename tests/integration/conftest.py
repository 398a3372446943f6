"""One private PostgreSQL server for the whole run, started by the first test that asks for it;
and `backend`/`url`: a fresh ledger on each kind of real store (tests/store_backends.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_server import postgres_server
from store_backends import Backend, PostgresBackend, SQLiteBackend


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """The URL of the server's `ledger` database (tests may make databases of their own)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SQLiteBackend(tmp_path)
    return PostgresBackend(request.getfixturevalue("postgres"))  # the server starts only if asked


@pytest.fixture
def url(backend: Backend) -> str:
    return backend.new_url()
