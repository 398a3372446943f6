"""Fakes of the service's LedgerStore and ViewProjection ports (adapters/service/ports.py)
that stage races.

Each wraps a real LedgerApplication (or PersistedProjection) and changes one thing about it, the
way another process would: no test reaches into the service's private methods to stage a race.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from snapledger.adapters.checkpoint.persisted import PersistedProjection
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.domain.errors import ConcurrentUpdate
from snapledger.projections.view import LedgerView


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


class OtherProcessActsAfterLoad:
    """Right after this process has caught its view up to load VM `vm` for a command (the
    first time only), another process acts (`then`), so that this one plans on a copy of the
    VM that is already stale. Wraps the ViewProjection port: a command loads a VM as a copy of
    the view, caught up right before (Snapledger.vm)."""

    def __init__(self, projection: PersistedProjection, then: Callable[[], object]) -> None:
        self.projection, self.then = projection, then

    def __getattr__(self, name: str) -> Any:
        return getattr(self.projection, name)

    def catch_up(self, view: LedgerView) -> LedgerView:
        caught_up = self.projection.catch_up(view)
        if self.then is not None:
            then, self.then = self.then, None  # type: ignore[assignment]
            then()
        return caught_up
