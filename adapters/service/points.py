"""Points in a VM's history as people name them (`diff VM A B`, `show VM NAME`): a ledger
position, a snapshot (the position of the event that took it), or a time.

A token names, in this order:
- `pos:N`, `name:S`, `at:TIME`: what its prefix says (names never hold a ':', so a prefix can't
  be mistaken for a name);
- digits only: the ledger position N, always, as `diff VM N M` always meant; a snapshot named
  "12" is `name:12`;
- a snapshot this VM has, or had (the newest snapshot of that name in its history): the
  position of the event that took it (`SnapshotTaken`, or `SnapshotsImported` for one adopted
  from libvirt). A name wins over a time: the default names (`20261125-210000`) read as times
  too;
- an ISO 8601 time (as `show --at` takes it): the last position at or before it.
Anything else is bad input (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from snapledger.adapters.service.queries import diff, position_for, view_of
from snapledger.domain.errors import BadInput, UnknownSnapshot
from snapledger.projections import history
from snapledger.projections.snapshot_info import snapshot_info_document

if TYPE_CHECKING:
    from snapledger.adapters.service.commands import Snapledger
    from snapledger.domain.vm import VirtualMachine

PREFIXES = ("pos", "name", "at")


@dataclass(frozen=True)
class Taken:
    """Where in the ledger a snapshot was taken, and in which state its VM was then."""

    position: int
    state: str | None  # "running" or "shut off" when recorded, else None


def _snapshot_names(event: Any) -> list[str]:
    kind = type(event).__name__
    if kind == "SnapshotTaken":
        return [str(event.name)]
    if kind == "SnapshotsImported":
        return [str(s["name"]) for s in event.snapshots]
    return []


def _state(details: Any) -> str | None:
    if not isinstance(details, dict) or "domain_running" not in details:
        return None
    return "running" if details["domain_running"] else "shut off"


def snapshot_taken(
    ledger: Snapledger, vm: VirtualMachine, name: str, until: int | None = None
) -> Taken | None:
    """The newest event in `vm`'s stream (at or before position `until`) that took or imported
    the snapshot `name`; None if there is none."""
    found: int | None = None
    op_id: str | None = None
    for event in ledger.app.newest_first(vm.id):
        if found is None:
            if name not in _snapshot_names(event):
                continue
            position = ledger.app.recorded_position(vm.id, event.originator_version)
            if position is None or (until is not None and position > until):
                continue
            found, op_id = position, getattr(event, "op_id", None)
            if op_id is None:  # imported: no operation of ours took it
                return Taken(found, None)
        elif type(event).__name__ == "OperationStarted" and event.op_id == op_id:
            return Taken(found, _state(event.details))
    return None if found is None else Taken(found, None)


def resolve(ledger: Snapledger, vm_name: str, token: str) -> int:
    """The ledger position `token` names for VM `vm_name` (see the module's docstring)."""
    prefix, colon, rest = token.partition(":")
    forced = prefix if colon and prefix in PREFIXES else None
    text = rest if forced else token
    if forced == "pos" or (forced is None and text.isdigit()):
        if not text.isdigit():
            raise BadInput(f"{token!r}: a ledger position is a number (0: the empty ledger)")
        return int(text)
    if forced in (None, "name"):
        vm = ledger.vm(vm_name)  # UnknownVm for a name the ledger does not know
        taken = snapshot_taken(ledger, vm, text)
        if taken is not None:
            return taken.position
        if forced == "name":
            raise UnknownSnapshot(f"VM {vm_name!r} has no snapshot {text!r}, nor ever had")
    now = datetime.now().astimezone()  # relative times and "yesterday" are the local day's
    if forced == "at":
        return ledger.position_at(history.parse_when(text, now))
    try:
        when = history.parse_when(text, now)
    except BadInput:
        raise UnknownSnapshot(
            f"{token!r} is neither a snapshot of VM {vm_name!r}, a ledger position, nor a time "
            "(ISO 8601, today, yesterday, or a span back such as 2h)"
        ) from None
    return ledger.position_at(when)


def diff_points(ledger: Snapledger, vm_name: str, start: str, end: str) -> dict[str, Any]:
    """For `diff VM A B`: `queries.diff` between the positions A and B name, and how they were
    named (`"points"`)."""
    first, second = resolve(ledger, vm_name, start), resolve(ledger, vm_name, end)
    if first > second and not (start.isdigit() and end.isdigit()):
        raise BadInput(
            f"diff {start} {end}: {start} is position {first}, after {end} (position {second}); "
            "give the earlier one first"
        )
    data = diff(ledger, vm_name, first, second)
    data["points"] = {"from": start, "to": end}
    return data


def snapshot_info(
    ledger: Snapledger, vm_name: str, name: str, at_event: int | None, at_time: str | None
) -> dict[str, Any]:
    """For `show VM NAME [--at-event N | --at TIME]`: the snapshot now, or as it was then."""
    until: int | None = None
    if at_event is None and at_time is None:
        view = ledger.view_of_one(vm_name)
    else:
        until, moment = position_for(ledger, at_event, at_time)
        view = view_of(ledger, vm_name, until, moment)
    vm = view.vms[vm_name]
    vm.snapshot(name)  # UnknownSnapshot
    taken = snapshot_taken(ledger, vm, name, until)
    return snapshot_info_document(
        view, vm_name, name, taken.position if taken else None, taken.state if taken else None
    )


__all__ = ["Taken", "diff_points", "resolve", "snapshot_info", "snapshot_taken"]
