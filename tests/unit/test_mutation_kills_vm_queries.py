"""Tests written for mutants of the VM aggregate's queries and rule checks (domain/vm_queries.py)
that survived the fast unit tests (issue 15, item 4; docs/reliability.md, "Mutation score").
Each states a rule the code depends on, not how it is written. Names and paths that must be
compared by value are built afresh ("".join) where the ledger would read them back from a
store or a command line: another object, the same string."""

from __future__ import annotations

import dataclasses

import pytest
from small_histories import BASE, IMG, VSIZE, two_hosts_shared, vm_with

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.simulated import SimulatedStorage
from snapledger.domain.errors import BadInput, OperationInProgress, StorageError, UnknownDisk

AT = "2026-01-01T00:00:00+00:00"
MADE = {"created": AT, "domain_xml": None, "description": None}


def fresh(text: str) -> str:
    """An equal string that is another object (as one read back from elsewhere would be)."""
    copy = "".join(list(text))
    assert copy == text and (copy is not text or len(text) < 2)
    return copy


# --- check_idle: an operation that failed -------------------------------------------------------


def test_a_failed_operation_refuses_the_next_command_in_one_line_naming_the_failure() -> None:
    storage, ledger = vm_with(snapshots=3)
    storage.inject(fail_at=1)
    with pytest.raises(StorageError):
        ledger.delete("vm", "s2")
    op = ledger.vm("vm").operation
    assert op is not None and op.failure == "step 0: injected failure at call 1"
    with pytest.raises(OperationInProgress) as caught:
        ledger.snapshot("vm", "s4")
    assert str(caught.value) == (
        f"VM 'vm' has an unfinished delete operation {op.op_id} "
        "(failed: step 0: injected failure at call 1); run 'snapledger recover'"
    )


# --- broken snapshots and the chains the VM recorded --------------------------------------------


def test_a_snapshot_is_broken_when_its_frozen_image_or_one_below_it_is_gone() -> None:
    """s1 <- s2 <- s3 freeze base, base.s1, base.s2: base.s1 recorded gone breaks s2 (its own
    frozen image) and s3 (base.s2 rests on it), not s1, whose frozen image lies below it."""
    storage, ledger = vm_with(snapshots=3, disks=("vda", "vdb"))
    vm = ledger.vm("vm")
    gone = vm.snapshots["s2"].disks["vda"]
    assert vm.chain_of(vm.snapshots["s3"].disks["vda"])[1] == gone
    vm.reconcile(observed=[], found=[], gone=[gone], disowned=[], at=AT)
    assert vm.broken_snapshots() == {"s2": ["vda"], "s3": ["vda"]}
    vm.reconcile(observed=[], found=[], gone=[vm.snapshots["s1"].disks["vdb"]], disowned=[], at=AT)
    assert vm.broken_snapshots() == {"s1": ["vdb"], "s2": ["vda", "vdb"], "s3": ["vda", "vdb"]}


def test_a_chain_is_the_image_and_every_image_below_it_down_to_the_base() -> None:
    storage, ledger = vm_with(snapshots=2)
    vm = ledger.vm("vm")
    assert vm.chain_of(vm.disks["vda"]) == [f"{IMG}/base.s2", f"{IMG}/base.s1", BASE]
    assert vm.chain_of(BASE) == [BASE]


def test_a_file_the_vm_does_not_hold_has_no_chain_as_the_vm_recorded_it() -> None:
    storage, ledger = vm_with(snapshots=1)
    assert ledger.vm("vm").chain_of(f"{IMG}/stranger.qcow2") == []


# --- where the VM's files may be ----------------------------------------------------------------


def test_a_pool_on_shared_storage_is_still_where_the_vms_files_may_be() -> None:
    storage = SimulatedStorage()
    storage.make_image("/pool/t.qcow2", VSIZE, {0: 0x10})
    storage.make_image("/vms/a/a.qcow2", VSIZE, {}, backing="/pool/t.qcow2")
    ledger = ledger_service(LedgerApplication("memory:"), storage, host="h1")
    ledger.adopt("a", {"vda": "/vms/a/a.qcow2"}, pools=["/pool"], shared=["/pool"])
    assert ledger.vm("a").allowed_dirs() == {"/vms/a", "/pool"}


# --- swap, import, reconcile, move --------------------------------------------------------------


def test_swapping_a_disk_onto_its_own_active_image_is_refused_as_such() -> None:
    storage, ledger = vm_with(snapshots=1, disks=("vda", "vdb"))
    vm = ledger.vm("vm")
    active = vm.images[vm.disks["vda"]].facts
    again = dataclasses.replace(active, path=fresh(active.path))
    with pytest.raises(BadInput) as caught:
        vm.swap_disk("vda", [again], AT)
    assert str(caught.value) == f"{active.path} is already the active image of vda"


def test_imported_snapshots_must_freeze_images_of_disks_the_vm_has() -> None:
    storage, ledger = vm_with(snapshots=0)
    with pytest.raises(UnknownDisk):
        ledger.vm("vm").import_snapshots(
            [{"name": "a", "parent": None, "disks": {"vdz": BASE}, **MADE}], "a", AT
        )
    with pytest.raises(BadInput, match=r"snapshot 'a': /images/stranger.qcow2 is not in vda's chain"):
        ledger.vm("vm").import_snapshots(
            [{"name": "a", "parent": None, "disks": {"vda": f"{IMG}/stranger.qcow2"}, **MADE}],
            "a", AT,
        )
    assert ledger.vm("vm").snapshots == {}


def test_reconciling_images_the_vm_does_not_hold_names_the_first_of_them() -> None:
    storage, ledger = vm_with(snapshots=0)
    strangers = [f"{IMG}/stranger-1.qcow2", BASE, f"{IMG}/stranger-2.qcow2"]
    with pytest.raises(BadInput) as caught:
        ledger.vm("vm").reconcile(observed=[], found=[], gone=strangers, disowned=[], at=AT)
    assert str(caught.value) == f"VM 'vm' holds no image {IMG}/stranger-1.qcow2"


def test_moving_a_vm_to_the_host_it_lives_on_is_refused_as_such() -> None:
    storage, ledger = two_hosts_shared()
    vm = ledger.vm("vb")
    assert vm.home == "hostb"
    with pytest.raises(BadInput) as caught:
        vm.move_home(fresh(vm.home), AT, taken_over=False, shared=("/shared",))
    assert str(caught.value) == "VM 'vb' already lives on host 'hostb'"
