"""Tests written for mutants of the DAG's per-VM indexes (projections/dag_index.py) that survived
the fast unit tests (issue 15, item 4; docs/reliability.md, "Mutation score"). An index kept up
to date event by event must equal one built afresh, and must be kept (not dropped and built
again, O(images)) through every event the module says it follows."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from small_histories import IMG, SCENARIOS, VSIZE, vm_with

from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import SimulatedStorage
from snapledger.domain.vm import VirtualMachine
from snapledger.projections.dag_index import VmImageIndex, index_of, kept_index
from snapledger.projections.view import LedgerView, private_copy

# What dag_index.changes_before follows; any other event drops the index.
FOLLOWED = {
    "OperationResumed", "OperationFailed", "Reverted", "ImagesDiscarded", "LibvirtBound",
    "PivotRequested", "DefinitionRecorded", "DriftDetected", "HomeMoved", "OperationRefused",
    "Retired", "SnapshotTaken", "SnapshotDeleted", "StorageStepCompleted", "OperationRolledBack",
    "ImagesObserved", "OperationStarted",
}


def _merges_and_a_file_gone() -> tuple[SimulatedStorage, Snapledger]:
    """Deletes by commit and by pull, a revert, gc, and reconcile recording a file gone."""
    storage, ledger = vm_with(snapshots=4)
    ledger.delete("vm", "s2", strategy="commit")
    ledger.delete("vm", "s3", strategy="pull")
    ledger.revert("vm", "s1")
    ledger.snapshot("vm", "s5")
    ledger.gc("vm")
    storage.delete(ledger.vm("vm").snapshots["s4"].disks["vda"])
    ledger.reconcile("vm")
    # the user puts a file of their own under the present (qemu-img rebase -u): found by reconcile
    storage.make_image(f"{IMG}/found.qcow2", VSIZE, {3: 0x33})
    present = ledger.vm("vm").disks["vda"]
    storage.rebase_unsafe(present, f"{IMG}/found.qcow2", "qcow2", fmt="qcow2")
    ledger.reconcile("vm")
    assert ledger.vm("vm").images[present].facts.backing == f"{IMG}/found.qcow2"
    return storage, ledger


def _rolled_back() -> tuple[SimulatedStorage, Snapledger]:
    """A snapshot whose second overlay could not be made: rolled back."""
    storage, ledger = vm_with(snapshots=1, disks=("vda", "vdb"))
    storage.inject(fail_at=2)
    with pytest.raises(Exception, match="injected"):
        ledger.snapshot("vm", "s2")
    return storage, ledger


HISTORIES: dict[str, Callable[[], tuple[SimulatedStorage, Snapledger]]] = {
    **SCENARIOS, "merges and a file gone": _merges_and_a_file_gone, "rolled back": _rolled_back,
}


def _same(index: VmImageIndex, vm: VirtualMachine) -> bool:
    built = VmImageIndex.built(vm)
    return (index.children, index.frozen, index.version) == (built.children, built.frozen, vm.version)


@pytest.mark.parametrize("history", HISTORIES)
def test_the_kept_index_follows_each_event_it_should_and_equals_one_built_afresh(history: str) -> None:
    storage, ledger = HISTORIES[history]()
    view = LedgerView()
    followed: set[str] = set()
    for event, position in ledger.app.events_after(0):
        kind = type(event).__name__
        vm = view.vms.get(getattr(event, "name", "")) or next(
            (v for v in view.vms.values() if v.id == event.originator_id), None
        )
        had = vm is not None and kept_index(vm) is not None
        view.apply(event, position)
        for each in view.vms.values():
            kept = kept_index(each)
            if kept is not None:
                assert _same(kept, each), (history, kind, each.name)
        if had and kind in FOLLOWED:
            assert vm is not None and kept_index(vm) is not None, f"{kind} dropped the index"
            followed.add(kind)
        for each in view.vms.values():
            index_of(each)  # read, as a planner would: kept from here on
    assert followed, history


def test_a_private_copy_reads_its_own_index_once_it_or_its_original_has_moved_on() -> None:
    """A copy made while its original has no index kept takes the original's when first read,
    only if neither has changed since."""
    storage, ledger = vm_with(snapshots=2)
    ledger.snapshot("vm", "s3")
    events = list(ledger.app.events_after(0))
    s3_starts = next(i for i, (e, _) in enumerate(events) if type(e).__name__ == "OperationStarted"
                     and getattr(e, "target", None) == "s3")
    view = LedgerView()
    view.apply_all(events[:s3_starts])
    original = view.vms["vm"]
    changed, same, behind = private_copy(original), private_copy(original), private_copy(original)
    changed.record_refusal("delete", "s9", "no such snapshot", "2026-01-01T00:00:00+00:00")
    assert _same(index_of(changed), changed)  # the copy changed before its index was read
    assert _same(index_of(same), same)
    view.apply_all(events[s3_starts:])  # the original moves on: s3 is taken
    assert original.version > behind.version and "s3" in original.snapshots
    assert _same(index_of(behind), behind) and "s3" not in str(index_of(behind).frozen)
    assert _same(index_of(original), original)


def test_a_copy_changed_after_its_index_was_read_does_not_read_the_stale_one() -> None:
    storage, ledger = vm_with(snapshots=2)
    copy = private_copy(ledger.refresh().vms["vm"])
    index_of(copy)
    copy.record_refusal("delete", "s9", "no such snapshot", "2026-01-01T00:00:00+00:00")
    assert kept_index(copy) is None
    assert _same(index_of(copy), copy)
