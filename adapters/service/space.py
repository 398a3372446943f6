"""`usage [VM]` and the bytes a delete frees: sizes measured on the disks through the storage
port, each image looked at once (its `inspect`: a qcow2 layer's allocation is read in process,
no qemu-img per image per snapshot), then projections/space.py works out the rest.

A VM living on another host (or a replayed ledger, which has no disks of its own) is not
measured here: its sizes are the ledger's last recorded ones, and it says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from snapledger.domain.errors import BadInput
from snapledger.domain.images import ImageFacts
from snapledger.domain.steps import DeleteFile, Plan
from snapledger.domain.vm import VirtualMachine
from snapledger.projections import space
from snapledger.projections.retention import bytes_freed
from snapledger.projections.view import LedgerView

if TYPE_CHECKING:
    from snapledger.adapters.service.commands import Snapledger


def measure(
    ledger: Snapledger, vm: VirtualMachine, paths: Iterable[str]
) -> tuple[dict[str, ImageFacts], list[str], dict[str, str]]:
    """What the disk holds now of each of `paths` (the same look a command's drift check takes,
    each file once): the facts read, a note for each that could not be read, and, for each
    image a delete would be refused on (drift, another name, unreadable), why."""
    checks = ledger.checks(vm)
    seen = checks.look(vm, [p for p in paths if p in vm.images and not vm.images[p].missing])
    measured = {path: facts for path, facts in seen.items() if isinstance(facts, ImageFacts)}
    notes = [f"{facts}; its recorded size is shown" for facts in seen.values() if isinstance(facts, str)]
    drift = checks.drift_by_path(vm, seen)  # the VM's directories resolved once, not per image
    refused = {}
    for path in seen:
        findings = drift.get(path, []) + checks.hard_links([path])
        if findings:
            refused[path] = "; ".join(findings)
    return measured, notes, refused


def usage(ledger: Snapledger, vm_name: str | None = None) -> list[space.VmSpace]:
    """The space of VM `vm_name`, or of every VM the ledger tracks, by name."""
    view = ledger.refresh()
    if vm_name is not None:
        if ledger.vm(vm_name).retired is not None:  # an unknown VM: UnknownVm
            raise BadInput(f"VM {vm_name!r} is retired: the ledger no longer tracks its images")
        names = [vm_name]
    else:
        names = sorted(view.live_vms())
    return [_vm_usage(ledger, view, name) for name in names]


def _vm_usage(ledger: Snapledger, view: LedgerView, name: str) -> space.VmSpace:
    vm = view.vms[name]
    if ledger.host is None or not vm.lives_on(ledger.host):
        where = "a replayed ledger has no disks" if ledger.host is None else f"it lives on host {vm.home}"
        return space.vm_space(
            view, name, {}, ledger.cost, None,
            [f"not measured ({where}): sizes as the ledger last recorded them"],
        )
    measured, notes, refused = measure(ledger, vm, sorted(vm.images))
    return space.vm_space(view, name, measured, ledger.cost, ledger.dependants(vm, view), notes, refused)


def freed_by(ledger: Snapledger, vm: VirtualMachine, view: LedgerView, plan: Plan) -> int:
    """The bytes of the files `plan` deletes, measured on the disks now (recorded where one
    can't be read)."""
    deleted = [step.path for step in plan.steps if isinstance(step, DeleteFile)]
    seen = ledger.checks(vm).look(vm, deleted)  # sizes only: the plan's checks come after
    measured = {path: facts for path, facts in seen.items() if isinstance(facts, ImageFacts)}
    return bytes_freed(view, vm.name, plan, measured)
