"""Reading the ledger: time travel (`show --at-event N | --at TIME`, `diff VM N M`) and `verify`.

Positions are the ledger positions `log --json` shows. Every past state comes from
`Snapledger.view_at`; what changed between two comes from `projections.history.diff`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from snapledger.domain.errors import BadInput, UnknownVm
from snapledger.projections import history
from snapledger.projections.view import LedgerView

if TYPE_CHECKING:
    from snapledger.adapters.service.commands import Snapledger


def position_for(ledger: Snapledger, at_event: int | None, at_time: str | None) -> tuple[int, str]:
    """The position `--at-event` or `--at` names, and how to say it in an error."""
    if at_event is not None and at_time is not None:
        raise BadInput("give either --at-event or --at, not both")
    if at_event is not None:
        last = ledger.last_position()
        if not 1 <= at_event <= last:
            raise BadInput(
                f"--at-event {at_event} is not a ledger position "
                + (f"(they run from 1 to {last})" if last else "(the ledger is empty)")
            )
        return at_event, f"position {at_event}"
    if at_time is None:
        raise BadInput("give --at-event N or --at TIME")
    when = history.parse_time(at_time)
    return ledger.position_at(when), at_time


def view_of(ledger: Snapledger, vm: str, position: int, moment: str) -> LedgerView:
    """The ledger's state right after `position`, which must hold `vm`."""
    view = ledger.view_at(position)
    if vm not in view.vms:
        ledger.refresh().vm(vm)  # an unknown name is refused as such
        raise UnknownVm(f"VM {vm!r} did not exist yet at {moment}")
    return view


def past_view(ledger: Snapledger, vm: str, at_event: int | None, at_time: str | None) -> LedgerView:
    """For `show VM --at-event N | --at TIME`."""
    position, moment = position_for(ledger, at_event, at_time)
    return view_of(ledger, vm, position, moment)


def diff(ledger: Snapledger, vm: str, start: int, end: int) -> dict[str, Any]:
    """For `diff VM N M`: what changed for `vm` from right after N to right after M (N may be
    0, the empty ledger)."""
    last = ledger.last_position()
    if not 0 <= start <= end <= last:
        raise BadInput(
            f"diff {start} {end}: positions must satisfy 0 <= N <= M <= {last} (the last position)"
        )
    after = view_of(ledger, vm, end, f"position {end}")
    before = ledger.view_at(start)
    data = history.diff(before, after, vm, ledger.app.events_after(start, stop=end))
    data["from"], data["to"] = start, end
    return data


__all__ = ["diff", "past_view", "position_for", "view_of"]


def verify(ledger: Snapledger, vm_name: str | None = None) -> list[str]:
    """Compare every image the ledger knows with the disk, and a libvirt VM's definitions with
    the ledger; read-only. Findings, or []."""
    names = [vm_name] if vm_name is not None else ledger.home_vms()
    findings: list[str] = []
    for name in names:
        vm = ledger.own(name)
        if vm.retired is not None:
            continue  # no longer tracked: its disks are nobody's business here
        if vm.operation is not None:
            findings.append(f"{name}: unfinished {vm.operation.kind} {vm.operation.op_id}")
        checks = ledger.checks(vm)
        drift = checks.drift(vm, checks.look(vm, sorted(vm.images)))
        if (hypervisor := ledger.operations.hypervisor_of(vm)) is not None:
            drift += hypervisor.findings(vm)
        findings += [f"{name}: {finding}" for finding in drift]
    return findings
