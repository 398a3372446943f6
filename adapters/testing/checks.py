"""The project's invariants, as functions over a ledger, its storage and the byte model: the
conformance machine runs them after every step, a replayed history once loaded and after each
operation. Each raises AssertionError saying what is wrong."""

from __future__ import annotations

from typing import Any

from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.service.drift import DiskChecks
from snapledger.domain.images import OwnerClass
from snapledger.projections.dag import ImageDag
from snapledger.projections.view import LedgerView, private_copy
from snapledger.testing.model import ByteModel, ByteStorage, SnapRef


def changes(app: Any) -> int:
    """The events recorded, a refusal's record aside (recording one changes nothing else)."""
    return sum(1 for event, _ in app.events_after(0) if type(event).__name__ != "OperationRefused")


def last_type(app: Any) -> str:
    """The type of the last event recorded (its short name)."""
    last = None
    for event, _ in app.events_after(0):
        last = event
    return type(last).__name__


def files_state(storage: ByteStorage) -> dict[str, tuple[object, ...]]:
    """Every file, as what it names below it and what it reads: equal before and after a
    refusal, which changes nothing."""
    state: dict[str, tuple[object, ...]] = {}
    for path in sorted(storage.paths()):
        facts = storage.inspect(path)
        state[path] = (facts.format, facts.backing, facts.backing_format,
                       tuple(sorted(storage.read_all(path).items())))
    return state


def bytes_as_modelled(ledger: Snapledger, storage: ByteStorage, model: ByteModel) -> None:
    """Every snapshot reads what it read when taken, every present what the model expects."""
    vms = ledger.view.vms
    for ref, disks in model.taken.items():
        assert set(vms[ref.vm].snapshots[ref.name].disks) == set(disks), ref

    def snapshot_path(ref: SnapRef, disk: str) -> str:
        return vms[ref.vm].snapshots[ref.name].disks[disk]

    wrong = model.misreads(storage.read_all, snapshot_path, lambda vm, disk: vms[vm].disks[disk])
    assert not wrong, "\n".join(wrong)


def user_files_kept(storage: ByteStorage, model: ByteModel) -> None:
    """A user's file is never deleted (its whole chain still reads), a frozen one never written."""
    for path in sorted(model.user_files):
        assert storage.exists(path), f"{path}, a user's file, was deleted"
        storage.read_all(path)  # raises if a file of its chain is gone
    for path, content in sorted(model.frozen_files.items()):
        assert storage.read_all(path) == content, f"{path}, a frozen file, was written"


def backing_as_recorded(ledger: Snapledger, storage: ByteStorage) -> None:
    """Every image the ledger holds is on disk as recorded, and so is the file it rests on."""
    for vm in ledger.view.vms.values():
        for record in vm.images.values():
            seen = storage.inspect(record.path, record.facts.format)
            recorded = (record.facts.backing, record.facts.backing_format)
            assert (seen.backing, seen.backing_format) == recorded, record.path
            if record.facts.backing is not None and record.facts.backing_format is not None:
                storage.inspect(record.facts.backing, record.facts.backing_format)


def no_drift(ledger: Snapledger, storage: ByteStorage) -> None:
    """What snapledger itself did never looks like drift: every idle VM's disks agree with it."""
    checks = DiskChecks(storage)
    for name, vm in sorted(ledger.refresh().live_vms().items()):
        if vm.operation is None:
            assert checks.drift(vm, checks.look(vm, sorted(vm.images))) == [], name


def nothing_open(ledger: Snapledger) -> None:
    """Between steps no operation is left open: a crash was recovered, a refusal opened none."""
    for name, vm in sorted(ledger.view.live_vms().items()):
        assert vm.operation is None, f"{name}: an operation was left open"


def view_is_the_fold(ledger: Snapledger) -> None:
    """The view kept up event by event is the one folded from scratch, and a command's private
    copy of each aggregate is what its own events fold to."""
    app = ledger.app
    rebuilt = LedgerView()
    rebuilt.apply_all(app.events_after(0))
    view = ledger.view
    assert rebuilt.canonical() == view.canonical()
    for each in (rebuilt, view):
        assert each.in_use == {i: r for i, r in each.registrations.items() if r.users}
    for registration in rebuilt.registrations.values():
        assert registration in view.registrations_of(registration.path, registration.host or None)
    for name, vm in view.vms.items():
        loaded = ledger.vm(name)
        assert loaded == app.load(vm.id), name
        loaded.disks["copy-only"] = "/nowhere"
        assert "copy-only" not in vm.disks
    for registration in view.registrations.values():
        assert private_copy(registration) == app.load(registration.id), registration.path


def nothing_unreachable(
    ledger: Snapledger, storage: ByteStorage, model: ByteModel, vm: str, include_detached: bool
) -> None:
    """After gc: every image of `vm` is needed, detached ones were discarded when asked (unless
    a user's file rests on them), and no file is an orphan."""
    dependants = ledger.unknown_dependants(vm)
    dag = ImageDag(ledger.view, dependants=dependants)
    without = ImageDag(ledger.view, ignore_detached_of=vm, dependants=dependants)
    for path in ledger.view.vms[vm].images:
        node = dag.nodes[path]
        assert node.needed, f"{path} is unreachable after gc"
        if include_detached and node.detached and not without.nodes[path].needed:
            chain = dag.chain(path)
            assert node.owner is not OwnerClass.MANAGED, f"{path} was not discarded"
            assert any(dag.nodes[p].owner is OwnerClass.MANAGED for p in chain[1:])
    known = {p for v in ledger.view.vms.values() for p in v.images}
    for path in storage.paths():
        assert path in known or path in model.user_files, f"{path} is an orphan file"


def every_invariant(ledger: Snapledger, storage: ByteStorage, model: ByteModel) -> None:
    """All of the above that hold between any two steps."""
    nothing_open(ledger)
    bytes_as_modelled(ledger, storage, model)
    user_files_kept(storage, model)
    backing_as_recorded(ledger, storage)
    no_drift(ledger, storage)
    view_is_the_fold(ledger)
