"""`usage [VM]` and the bytes a delete frees: sizes measured on the disks through the storage
port, each image looked at once (its `inspect`: a qcow2 layer's allocation is read in process,
no qemu-img per image per snapshot), then projections/space.py works out the rest.

A VM living on another host (or a replayed ledger, which has no disks of its own) is not
measured here: its sizes are the ledger's last recorded ones, and it says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from snapledger.adapters.service.ports import StoragePort
from snapledger.domain.errors import BadInput, StorageError
from snapledger.domain.images import ImageFacts
from snapledger.domain.steps import DeleteFile, Plan
from snapledger.domain.vm import VirtualMachine
from snapledger.projections import space
from snapledger.projections.retention import bytes_freed
from snapledger.projections.view import LedgerView

if TYPE_CHECKING:
    from snapledger.adapters.service.commands import Snapledger


def measure(
    storage: StoragePort, vm: VirtualMachine, paths: Iterable[str], unreadable: list[str] | None = None
) -> tuple[dict[str, ImageFacts], list[str]]:
    """The facts on the disk now of each of `paths` the VM's ledger holds (opened with its
    recorded format), and a note for each that could not be read (added to `unreadable`)."""
    measured: dict[str, ImageFacts] = {}
    notes: list[str] = []
    for path in paths:
        record = vm.images.get(path)
        if record is None or record.missing or path in measured:
            continue
        try:
            measured[path] = storage.inspect(path, record.facts.format)
        except StorageError as error:
            notes.append(f"{path}: not measured ({error}); its recorded size is shown")
            if unreadable is not None:
                unreadable.append(path)
    return measured, notes


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
    unreadable: list[str] = []
    measured, notes = measure(ledger.storage, vm, sorted(vm.images), unreadable)
    return space.vm_space(view, name, measured, ledger.cost, ledger.dependants(vm, view), notes, unreadable)


def freed_by(ledger: Snapledger, vm: VirtualMachine, view: LedgerView, plan: Plan) -> int:
    """The bytes of the files `plan` deletes, measured on the disks now (recorded where one
    can't be read)."""
    deleted = [step.path for step in plan.steps if isinstance(step, DeleteFile)]
    measured, _ = measure(ledger.storage, vm, deleted)
    return bytes_freed(view, vm.name, plan, measured)
