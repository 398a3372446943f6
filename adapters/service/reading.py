"""The service's reading side: the view of the ledger kept caught up, its past, and one VM
as a private copy a command may change (commands.py's Snapledger is built on it)."""

from __future__ import annotations

from datetime import datetime

from snapledger.adapters.service.ports import Clock, LedgerStore, ViewProjection
from snapledger.domain.errors import BadInput, UnknownVm
from snapledger.domain.names import time_snapshot_name
from snapledger.domain.vm import VirtualMachine
from snapledger.projections.view import LedgerView, private_copy


class LedgerReading:
    """What the service reads through: the store, the projection, the clock and the view."""

    app: LedgerStore
    projection: ViewProjection
    clock: Clock
    _view: LedgerView | None

    @property
    def view(self) -> LedgerView:
        """Every aggregate of the ledger, as of the last refresh. Made on first use from the
        persisted projection's newest checkpoint and the events after it, never by folding
        the whole ledger (unless there is no checkpoint yet); the projection is then saved."""
        if self._view is None:
            self._view = self.projection.present()
        return self._view

    @view.setter
    def view(self, view: LedgerView) -> None:
        self._view = view

    def refresh(self) -> LedgerView:
        """Catch the view up with everything recorded since it last looked (by anyone)."""
        return self.projection.catch_up(self.view)

    def checkpoint(self) -> None:
        """Bring the persisted projection up to the view (cheap: only what changed). Every
        command ends with it; a crash before it only leaves the next reader more to catch up."""
        if self._view is not None:
            self.projection.save(self._view)

    def last_position(self) -> int:
        """The ledger position of the last event recorded (0 for an empty ledger)."""
        return self.app.last_position()

    def view_at(self, position: int) -> LedgerView:
        """The whole ledger's state right after the event at `position` (0: before the first
        event): the state `show` gave at that moment. The one way into the past."""
        last = self.last_position()
        if not 0 <= position <= last:
            raise BadInput(f"position {position} is not in the ledger (it runs from 1 to {last})")
        return self.projection.view_at(position)  # the nearest checkpoint, then the events

    def position_at(self, when: datetime) -> int:
        """The position of the last event whose time is at or before `when` (0 if none)."""
        return self.app.position_at(when)

    def new_snapshot_name(self, vm_name: str) -> str:
        """A name for `snapshot VM` without one: the UTC time now, suffixed if the VM already
        has a snapshot of that name (two processes in the same second: the second one's
        snapshot is refused as a duplicate, nothing recorded)."""
        vm = self.vm(vm_name)
        return time_snapshot_name(self.clock(), lambda name: name in vm.snapshots)

    def view_of_one(self, name: str) -> LedgerView:
        """The view `show NAME` reads: the ledger caught up; or, on a long ledger with no
        checkpoint near its end (a first start, an upgrade), the VM and the VMs sharing its
        images, each from its own events (persisted.py), so that the first `show` does not
        wait for the whole ledger to be folded."""
        if self._view is None:
            alone = self.projection.view_of_one(name)
            if alone is not None:
                return alone
        self.vm(name)  # an unknown VM: a clear error
        return self.view

    def vm(self, name: str) -> VirtualMachine:
        """The VM of that name as the ledger holds it now: the view caught up with every event
        recorded (by anyone), and a private copy of its VM, which the command may change. Its
        cost does not grow with the VM's history (no replay of its events); saving it is still
        refused if another writer got there first (the store's optimistic concurrency)."""
        known = self.refresh().vms.get(name)  # the newest VM of that name (after a retire)
        if known is None:
            raise UnknownVm(f"no VM named {name!r} in the ledger")
        return private_copy(known)
