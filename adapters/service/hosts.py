"""Many hosts on one ledger, the service's part (semantics.md, "Many hosts, one ledger"): which
VMs this host may change, where a VM's home finds and makes image registrations, and `move`.

The rules of what a host's planning sees are projections/scope.py's; the VM's home and its moves
are the aggregate's (domain/vm.py). What is here needs the store or the hypervisor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapledger.adapters.service import recovery
from snapledger.adapters.service.registrations import Registry
from snapledger.domain.errors import BadInput, HomeElsewhere, OperationInProgress
from snapledger.domain.image_registry import ImageRegistration
from snapledger.domain.names import check_host
from snapledger.domain.vm import VirtualMachine
from snapledger.projections.scope import NO_HOST, is_shared, shared_dirs
from snapledger.projections.view import private_copy

if TYPE_CHECKING:
    from snapledger.adapters.service.commands import Snapledger


def own(ledger: Snapledger, name: str) -> VirtualMachine:
    """The VM of that name, loaded fresh, if it lives on this host; HomeElsewhere (exit 4)
    naming its home otherwise, before anything is recorded."""
    vm = ledger.vm(name)
    if ledger.host is None:  # a replayed history: every host at once
        return vm
    try:
        vm.check_home(ledger.host)
    except HomeElsewhere as elsewhere:
        if runs_here(ledger, vm):  # a live migration: offered as a move, never done silently
            raise HomeElsewhere(
                f"{elsewhere}; its libvirt domain runs on this host now (migrated?): record that "
                f"with `snapledger move {name} --to {ledger.host}` on host {vm.home}, or here "
                "with --take-over if that host is dead"
            ) from None
        raise
    return vm


def runs_here(ledger: Snapledger, vm: VirtualMachine) -> bool:
    """Whether `vm`'s libvirt domain runs on this host's libvirt (False when it can't tell)."""
    if vm.libvirt is None or ledger.hypervisor is None:
        return False
    try:
        return bool(ledger.hypervisor.runtime(vm).get("domain_running"))
    except Exception:  # no libvirt here, no such domain here: nothing to offer
        return False


def home_vms(ledger: Snapledger) -> list[str]:
    """The names of the tracked VMs that live on this host: what a sweep without a VM (gc,
    recover, verify of the disks) covers."""
    return sorted(
        name for name, vm in ledger.refresh().live_vms().items()
        if ledger.host is None or vm.lives_on(ledger.host)
    )


def registry(ledger: Snapledger, vm: VirtualMachine) -> Registry:
    """Where `vm`'s home host finds and makes image registrations: a file on shared storage (a
    directory some VM declared shared, `vm`'s own included) is one registration for every host;
    any other file is its home host's own, found under (home, path), or under its path alone
    when that host registered it before hosts."""
    shared = tuple(sorted({*shared_dirs(ledger.view), *vm.shared}))
    home = vm.home

    def owner(path: str) -> str:
        return "" if home in NO_HOST or is_shared(path, shared) else home

    def find(path: str) -> ImageRegistration | None:
        # as recorded now (by anyone: the view caught up, one short query), a private copy; one
        # recorded after this look makes the save fail (optimistic concurrency), never lost
        view = ledger.refresh()
        host = owner(path)
        found = view.registration(path, host)
        if found is None and host:
            earlier = view.registration(path)  # registered before hosts
            found = earlier if earlier is not None and earlier.host in (host, *NO_HOST) else None
        return private_copy(found) if found is not None else None

    return Registry(find, owner)


def move(ledger: Snapledger, vm_name: str, to: str, take_over: bool = False) -> None:
    """Give VM `vm_name` the home host `to` (after a live migration). Run on its home host;
    with `take_over`, run on the new host when the old one is dead (the operator vouches;
    fencing it is the operator's job). Every image must lie in a shared directory."""
    check_host(to)
    ledger.refresh()
    vm = ledger.vm(vm_name)
    vm.check_tracked()
    if take_over:
        if ledger.host is not None and to != ledger.host:
            raise BadInput(f"--take-over is run on the new home: this is host {ledger.host!r}, not {to!r}")
    else:
        vm = own(ledger, vm_name)
        if vm.operation is not None and (
            busy := recovery.still_running(ledger.runners, vm.operation, vm.taken_over_from)
        ):
            raise OperationInProgress(f"VM {vm_name!r}: {busy}")
    vm.move_home(to, ledger.clock(), take_over, tuple(sorted({*shared_dirs(ledger.view), *vm.shared})))
    ledger.save(vm)
