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
def replayed_history() -> Callable[[str | Path], World]:
    """`replayed_history(path)`: an exported history (`snapledger export --format jsonl`) on
    simulated storage, every invariant checked; continue it with `world.run(ops)`."""
    from snapledger.testing.world import replayed

    return replayed
