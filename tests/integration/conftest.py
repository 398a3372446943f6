"""`backend`/`url`: a fresh ledger on each kind of real store (tests/store_backends.py); the
PostgreSQL server behind them is tests/conftest.py's `postgres`, started only if asked."""

from __future__ import annotations

from pathlib import Path

import pytest
from store_backends import Backend, PostgresBackend, SQLiteBackend


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return SQLiteBackend(tmp_path)
    return PostgresBackend(request.getfixturevalue("postgres"))  # the server starts only if asked


@pytest.fixture
def url(backend: Backend) -> str:
    return backend.new_url()
