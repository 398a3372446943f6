"""The pytest plugin (entry point `snapledger`, loaded into every pytest run once installed):
fixtures for users' tests. Importing it imports nothing of snapledger or hypothesis; a fixture
does, when a test asks for it, so a run that uses none pays nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from snapledger.testing.world import World


@pytest.fixture
def simulated_ledger() -> World:
    """An in-memory ledger over simulated storage, with the byte model beside it: make images
    with `world.storage.make_image`, act with `world.ledger`, then `world.check()`."""
    from snapledger.testing.world import World

    return World()


@pytest.fixture
def replayed_history(request: pytest.FixtureRequest) -> Callable[[str | Path], World]:
    """`replayed_history(path)`: an exported history (`snapledger export --format jsonl`) on
    simulated storage, every invariant checked; continue it with `world.run(ops)`. A relative
    `path` is looked for beside the test's file first, then in the working directory."""
    from snapledger.testing.world import replayed

    here = request.path.parent

    def replay(path: str | Path) -> World:
        given = Path(path)
        if not given.is_absolute() and (here / given).exists():
            given = here / given
        elif not given.exists():
            where = f" nor beside the test ({here / given})" if not given.is_absolute() else ""
            raise FileNotFoundError(f"no exported history at {str(path)!r}: not in the working "
                                    f"directory ({Path.cwd()}){where}")
        return replayed(given)

    return replay
