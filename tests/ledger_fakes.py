"""Fakes of the service's LedgerStore port (adapters/service/ports.py) that stage races.

Each wraps a real LedgerApplication and changes one thing about it, the way another process
would: no test reaches into the service's private methods to stage a race.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.domain.errors import ConcurrentUpdate
from snapledger.domain.vm import vm_id


class StoreWrapper:
    """The wrapped store in all but what a subclass changes."""

    def __init__(self, app: LedgerApplication) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)


class LosesEveryRace(StoreWrapper):
    """Another process records first, every time this one saves."""

    def record(self, *aggregates: Any) -> None:
        raise ConcurrentUpdate("another process recorded on this part of the ledger first")


class OtherProcessActsAfterLoad(StoreWrapper):
    """Right after this process loads VM `vm` (the first time only), another process acts
    (`then`), so that this one plans on a version that is already stale."""

    def __init__(self, app: LedgerApplication, vm: str, then: Callable[[], object]) -> None:
        super().__init__(app)
        self.vm, self.then = vm_id(vm), then

    def load(self, aggregate_id: UUID) -> Any | None:
        loaded = self.app.load(aggregate_id)
        if aggregate_id == self.vm and self.then is not None:
            then, self.then = self.then, None  # type: ignore[assignment]
            then()
        return loaded
