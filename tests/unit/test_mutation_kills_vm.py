"""Tests written for mutants of the VM aggregate that survived the fast unit tests (issue 15, item 4;
docs/reliability.md, "Mutation score"). Each states a rule the code depends on, not how it is written."""

from __future__ import annotations

import dataclasses

import pytest
from small_histories import (
    BASE,
    IMG,
    VSIZE,
    crashed,
    user_overlay_over_frozen_s2,
    vm_with,
)

from snapledger.adapters.storage.simulated import CLUSTER
from snapledger.domain.errors import (
    BadInput,
    OperationInProgress,
    Refused,
)

# --- the VM aggregate (domain/vm.py) ------------------------------------------------------------

AT = "2026-01-01T00:00:00+00:00"


def test_only_the_operation_in_progress_may_be_carried_on() -> None:
    storage, ledger = crashed()
    vm = ledger.vm("vm")
    assert vm.operation is not None
    with pytest.raises(OperationInProgress):
        vm.complete_step("not-this-one", vm.operation.done, [])
    with pytest.raises(OperationInProgress):
        vm.resume_operation("not-this-one", {"pid": 1}, AT)
    _, other = vm_with(snapshots=1)
    with pytest.raises(OperationInProgress):
        other.vm("vm").fail_operation("no-operation", 0, "boom")


def test_a_resumed_operation_is_recorded_with_its_new_runner() -> None:
    storage, ledger = crashed()
    vm = ledger.vm("vm")
    op = vm.operation
    assert op is not None
    vm.collect_events()
    vm.resume_operation(op.op_id, {"pid": 4242}, AT)
    assert [type(e).__name__ for e in vm.collect_events()] == ["OperationResumed"]
    assert vm.operation is not None and vm.operation.runner == {"pid": 4242}


def test_our_own_pivot_supersedes_the_operators_word_for_that_step() -> None:
    storage, ledger = crashed()
    vm = ledger.vm("vm")
    op = vm.operation
    assert op is not None
    vm.record_pivot(op.op_id, op.done, "vda", "/images/base.s1", AT, vouched=True)
    assert vm.operation is not None and vm.operation.pivot_vouched(op.done)
    vm.record_pivot(op.op_id, op.done, "vda", "/images/base.s1", AT)
    assert not vm.operation.pivot_vouched(op.done)
    for index in (op.done - 1, op.done + 1):  # only the step in progress pivots
        with pytest.raises(BadInput):
            vm.record_pivot(op.op_id, index, "vda", "/images/base.s1", AT)
    assert vm.operation.pivot_requested(op.done, "vda") == "/images/base.s1"


def test_a_detached_image_made_active_again_is_no_longer_detached() -> None:
    storage, ledger, own = user_overlay_over_frozen_s2()
    frozen = ledger.vm("vm").snapshots["s2"].disks["vda"]
    storage.make_image(f"{IMG}/again.qcow2", VSIZE, {}, backing=frozen)
    ledger.swap_disk("vm", "vda", f"{IMG}/again.qcow2")
    assert ledger.vm("vm").images[own].detached
    ledger.swap_disk("vm", "vda", own)
    assert not ledger.vm("vm").images[own].detached


def test_deleting_a_snapshot_hands_its_children_to_its_parent_and_no_one_else() -> None:
    storage, ledger = vm_with(snapshots=3)
    ledger.revert("vm", "s1")
    ledger.snapshot("vm", "s4")
    ledger.delete("vm", "s2")
    parents = {name: s.parent for name, s in ledger.vm("vm").snapshots.items()}
    assert parents == {"s1": None, "s3": "s1", "s4": "s1"}


def test_snapshots_imported_from_another_tool_keep_their_tree() -> None:
    storage, ledger = vm_with(snapshots=0)
    vm = ledger.vm("vm")
    made = {"created": AT, "domain_xml": None, "description": None}
    vm.import_snapshots(
        [
            {"name": "a", "parent": None, "disks": {"vda": BASE}, **made},
            {"name": "b", "parent": "a", "disks": {"vda": BASE}, **made},
        ],
        current="b",
        at=AT,
    )
    assert {n: s.parent for n, s in vm.snapshots.items()} == {"a": None, "b": "a"}
    with pytest.raises(BadInput, match="unknown"):
        ledger.vm("vm").import_snapshots(
            [{"name": "c", "parent": "nowhere", "disks": {"vda": BASE}, **made}], None, AT
        )


def test_images_and_definitions_are_recorded_only_when_they_changed() -> None:
    storage, ledger = vm_with(snapshots=1)
    vm = ledger.vm("vm")
    vm.collect_events()
    present = vm.images[vm.disks["vda"]].facts
    vm.observe_images([dataclasses.replace(present)])  # an equal copy: nothing new
    vm.record_definition("".join(["<domain>", "</domain>"]), AT)
    vm.record_definition("".join(["<domain>", "</domain>"]), AT)  # the same again
    assert [type(e).__name__ for e in vm.collect_events()] == ["DefinitionRecorded"]
    vm.observe_images([dataclasses.replace(present, allocated=present.allocated + CLUSTER)])
    assert [type(e).__name__ for e in vm.collect_events()] == ["ImagesObserved"]


@pytest.mark.parametrize("count", [1, 3, 4])
def test_a_vm_with_files_on_its_hosts_own_storage_cannot_move(count: int) -> None:
    storage, ledger = vm_with(snapshots=count - 1)
    vm = ledger.vm("vm")
    local = sorted(vm.images)
    assert len(local) == count
    with pytest.raises(Refused) as caught:
        vm.move_home("elsewhere", AT, taken_over=False, shared=())
    said = str(caught.value)
    named = ", ".join(local[:3]) + (" ..." if count > 3 else "")
    verb = "is" if count == 1 else "are"
    assert f"can't move: {named} {verb} not on shared storage" in said


def test_a_revert_brings_back_the_definition_the_snapshot_kept() -> None:
    storage, ledger = vm_with(snapshots=0)
    ledger.snapshot("vm", "s1", domain_xml="<domain>one</domain>")
    ledger.snapshot("vm", "s2")  # no definition kept
    vm = ledger.vm("vm")
    vm.record_definition("<domain>two</domain>", AT)
    ledger.save(vm)
    ledger.revert("vm", "s1")
    assert ledger.vm("vm").domain_xml == "<domain>one</domain>"
    ledger.revert("vm", "s2")
    assert ledger.vm("vm").domain_xml == "<domain>one</domain>"


def test_imported_snapshots_must_name_a_current_one_among_them() -> None:
    storage, ledger = vm_with(snapshots=0)
    made = {"created": AT, "domain_xml": None, "description": None}
    with pytest.raises(BadInput):
        ledger.vm("vm").import_snapshots(
            [{"name": "a", "parent": None, "disks": {"vda": BASE}, **made}], "nowhere", AT
        )


def test_reconciling_an_image_the_vm_does_not_hold_is_refused_naming_it() -> None:
    storage, ledger = vm_with(snapshots=0)
    with pytest.raises(BadInput, match="holds no image /images/stranger.qcow2"):
        ledger.vm("vm").reconcile(observed=[], found=[], gone=["/images/stranger.qcow2"],
                                  disowned=[], at=AT)


def test_an_operation_is_closed_only_when_finished_and_only_as_what_it_is() -> None:
    storage, ledger = crashed()  # a delete, its first step not done
    vm = ledger.vm("vm")
    op = vm.operation
    assert op is not None and op.done < len(op.steps)
    with pytest.raises(BadInput, match="not a finished delete"):
        vm.record_snapshot_deleted(op.op_id, AT)
    for index in range(op.done, len(op.steps)):
        vm.complete_step(op.op_id, index, [])
    with pytest.raises(BadInput, match="not a finished revert"):
        vm.record_reverted(op.op_id, AT)
    vm.record_snapshot_deleted(op.op_id, AT)
    assert vm.operation is None and "s2" not in vm.snapshots
