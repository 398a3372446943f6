"""One private PostgreSQL server for the whole run, started by the first test that asks for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres_server import postgres_server


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """The URL of the server's `ledger` database (tests may make databases of their own)."""
    with postgres_server() as url:
        yield url
