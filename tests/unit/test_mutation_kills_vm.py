"""Tests written for mutants of the VM aggregate that survived the fast unit tests (issue 15, item 4;
docs/reliability.md, "Mutation score"). Each states a rule the code depends on, not how it is written."""

from __future__ import annotations

import dataclasses

import pytest
from eventsourcing.domain import Snapshot
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
from snapledger.domain.images import ImageFacts, Origin
from snapledger.domain.steps import CreateOverlay, Plan, ReleaseImage, SetActive
from snapledger.domain.vm import VirtualMachine
from snapledger.projections.planners import plan_snapshot

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


# --- events stored by older versions, and checkpoints of them -----------------------------------


def _adopted_as_before(**new_fields: object) -> VirtualMachine:
    """An Adopted event as a version before `confined` and `generation` stored it (or with them)."""
    found = {**ImageFacts("/pool/base.qcow2", "qcow2", None, None, VSIZE, 0, 0, 0, 0).to_dict(),
             "origin": Origin.FOUND.value}
    top = {**ImageFacts("/vms/top.qcow2", "qcow2", "/pool/base.qcow2", "qcow2", VSIZE, 0, 0, 0, 0)
           .to_dict(), "origin": Origin.ADOPTED.value}
    return VirtualMachine(name="old", disks={"vda": "/vms/top.qcow2"}, images=[top, found],
                          pools=[], domain_xml=None, at=AT, **new_fields)


def test_a_vm_adopted_before_chains_were_confined_keeps_every_directory_it_recorded() -> None:
    assert _adopted_as_before().adopted_dirs == {"/vms", "/pool"}
    assert _adopted_as_before(confined=True).adopted_dirs == {"/vms"}
    assert _adopted_as_before(confined=False).adopted_dirs == {"/vms", "/pool"}


def test_a_vm_recorded_before_generations_is_the_first_of_its_name() -> None:
    vm = _adopted_as_before()
    assert vm.generation == 1 and vm.id == VirtualMachine.create_id("old", 1)
    checkpoint = Snapshot.take(vm)  # as a checkpoint of a version without generations held it
    del checkpoint.state["generation"]
    assert checkpoint.mutate(None).generation == 1


# --- the operation in progress ------------------------------------------------------------------


def test_an_operation_is_named_by_its_id_whatever_the_string_object() -> None:
    storage, ledger = crashed()
    vm = ledger.vm("vm")
    op = vm.operation
    assert op is not None
    for other in ("0", "~"):  # ids that sort before and after every hex id
        with pytest.raises(OperationInProgress):
            vm.complete_step(other, op.done, [])
    for index in (op.done - 1, op.done + 1):
        with pytest.raises(BadInput, match="out of order"):
            vm.complete_step(op.op_id, index, [])
    vm.complete_step("".join(op.op_id), op.done, [])  # an equal id read back from elsewhere
    assert vm.operation is not None and vm.operation.done == op.done + 1


def test_rolling_back_puts_back_the_disks_it_switched_and_forgets_the_overlays_it_made() -> None:
    storage, ledger = vm_with(snapshots=0, disks=("vda", "vdb"))
    vm = ledger.vm("vm")
    before, images = dict(vm.disks), set(vm.images)
    plan = plan_snapshot(ledger.view, "vm", "s1", storage.exists)
    made = [s.path for s in plan.steps if isinstance(s, CreateOverlay)]
    switched = [i for i, s in enumerate(plan.steps) if isinstance(s, SetActive)]
    assert len(made) == 2 and switched  # both overlays come before the first switch
    vm.start_operation("op1", plan.kind, "s1", plan, [], {"previous_active": before}, AT)
    for index in range(switched[0] + 1):
        vm.complete_step("op1", index, [])
    assert vm.disks != before
    vm.roll_back_operation("op1", made, "the next step failed")
    assert vm.disks == before and set(vm.images) == images and vm.operation is None


def test_a_finished_operation_is_closed_only_as_its_own_kind_whichever_sorts_first() -> None:
    storage, ledger = vm_with(snapshots=1)
    vm = ledger.vm("vm")
    plan = plan_snapshot(ledger.view, "vm", "s2", storage.exists)
    details = {"previous_active": dict(vm.disks), "frozen": dict(vm.disks)}
    vm.start_operation("op2", plan.kind, "s2", plan, [], details, AT)
    for index in range(len(plan.steps)):
        vm.complete_step("op2", index, [])
    for wrong in (vm.record_reverted, vm.record_snapshot_deleted):  # "snapshot" sorts after both
        with pytest.raises(BadInput, match="not a finished"):
            wrong("op2", AT)
    vm.record_snapshot_taken("op2", AT)
    assert "s2" in vm.snapshots and vm.operation is None


# --- facts recorded as events -------------------------------------------------------------------


def test_a_pivot_is_an_event_and_the_operators_word_holds_until_our_own_pivot() -> None:
    storage, ledger = crashed()
    vm = ledger.vm("vm")
    op = vm.operation
    assert op is not None
    vm.collect_events()
    vm.record_pivot(op.op_id, op.done, "vda", "/images/base.s1", AT, vouched=True)
    vm.record_pivot(op.op_id, op.done, "vda", "/images/base.s1", AT, vouched=True)  # said twice
    assert vm.operation is not None and vm.operation.pivot_vouched(op.done)
    assert [type(e).__name__ for e in vm.collect_events()] == ["PivotRequested"] * 2
    vm._pivot_requested(op_id=op.op_id, index=op.done, disk="vda", base="/images/base.s1", at=AT)
    assert not vm.operation.pivot_vouched(op.done)  # a pivot event stored before `vouched` was


def test_imported_snapshots_are_an_event() -> None:
    storage, ledger = vm_with(snapshots=0)
    vm = ledger.vm("vm")
    vm.collect_events()
    made = {"created": AT, "domain_xml": None, "description": None}
    vm.import_snapshots([{"name": "a", "parent": None, "disks": {"vda": BASE}, **made}], "a", AT)
    assert [type(e).__name__ for e in vm.collect_events()] == ["SnapshotsImported"]


def test_reconcile_records_the_images_it_found_in_a_chain_as_read_only_finds() -> None:
    storage, ledger = vm_with(snapshots=0)
    vm = ledger.vm("vm")
    below = ImageFacts("/images/below.qcow2", "qcow2", None, None, VSIZE, 0, 0, 0, 0)
    vm.reconcile(observed=[], found=[below], gone=[], disowned=[], at=AT)
    assert vm.images["/images/below.qcow2"].origin is Origin.FOUND


def test_a_pivot_asked_of_libvirt_is_never_taken_for_the_operators_word() -> None:
    storage, ledger = crashed()
    vm = ledger.vm("vm")
    op = vm.operation
    assert op is not None
    vm.record_pivot(op.op_id, op.done, "vda", "/images/base.s1", AT)
    assert vm.operation is not None and not vm.operation.pivot_vouched(op.done)


def test_reconcile_makes_a_replaced_managed_image_the_users() -> None:
    storage, ledger = vm_with(snapshots=1)
    vm = ledger.vm("vm")
    present = vm.disks["vda"]
    assert vm.images[present].origin is Origin.MANAGED
    vm.reconcile(observed=[], found=[], gone=[], disowned=[present], at=AT)
    assert vm.images[present].origin is Origin.ADOPTED


def test_a_refusal_is_an_event() -> None:
    storage, ledger = vm_with(snapshots=0)
    vm = ledger.vm("vm")
    vm.collect_events()
    vm.record_refusal("delete", "s9", "no snapshot s9", AT)
    assert [type(e).__name__ for e in vm.collect_events()] == ["OperationRefused"]


def test_an_operation_of_hundreds_of_steps_is_carried_out_and_closed_step_by_step() -> None:
    """Step numbers past 256 are other int objects each time they are computed (a gc of many
    images has that many steps): the checks compare them by value."""
    storage, ledger = vm_with(snapshots=0)
    vm = ledger.vm("vm")
    steps = tuple(ReleaseImage(f"/nowhere/{i}.qcow2") for i in range(300))
    vm.start_operation("big", "gc", None, Plan("gc", steps), [], {}, AT)
    for index in range(300):
        if index == 280:
            vm.record_pivot("big", int(str(index)), "vda", BASE, AT)
        vm.complete_step("big", int(str(index)), [])
    vm.record_images_discarded("big", AT)
    assert vm.operation is None


def test_a_swapped_in_image_is_the_users_and_the_files_below_it_are_found() -> None:
    storage, ledger = vm_with(snapshots=0)
    storage.make_image(f"{IMG}/new-base.qcow2", VSIZE, {0: 0x44})
    storage.make_image(f"{IMG}/new.qcow2", VSIZE, {}, backing=f"{IMG}/new-base.qcow2")
    ledger.swap_disk("vm", "vda", f"{IMG}/new.qcow2")
    images = ledger.vm("vm").images
    assert images[f"{IMG}/new.qcow2"].origin is Origin.ADOPTED
    assert images[f"{IMG}/new-base.qcow2"].origin is Origin.FOUND


def test_a_step_that_makes_a_detached_image_active_again_undetaches_it_and_no_other() -> None:
    storage, ledger, own = user_overlay_over_frozen_s2()
    frozen = ledger.vm("vm").snapshots["s2"].disks["vda"]
    storage.make_image(f"{IMG}/again.qcow2", VSIZE, {}, backing=frozen)
    ledger.swap_disk("vm", "vda", f"{IMG}/again.qcow2")
    vm = ledger.vm("vm")
    assert vm.images[own].detached and not vm.images[f"{IMG}/again.qcow2"].detached
    back = Plan("revert", (SetActive("vda", own),))
    vm.start_operation("back", "revert", "s2", back, [], {"previous_active": dict(vm.disks)}, AT)
    vm.complete_step("back", 0, [])
    assert vm.disks["vda"] == own and not vm.images[own].detached
    assert not vm.images[f"{IMG}/again.qcow2"].detached


def test_an_overlay_made_and_not_yet_observed_is_recorded_with_no_measured_facts() -> None:
    """What a simulated plan (freeing.py) and the aggregate alone see until the adapter's
    observation, carried by the same event in a real run, replaces it."""
    storage, ledger = vm_with(snapshots=0)
    vm = ledger.vm("vm")
    plan = plan_snapshot(ledger.view, "vm", "s1", storage.exists)
    vm.start_operation("op", plan.kind, "s1", plan, [], {"previous_active": dict(vm.disks)}, AT)
    vm.complete_step("op", 0, [])
    (made,) = [s for s in plan.steps if isinstance(s, CreateOverlay)]
    assert vm.images[made.path].facts == ImageFacts(
        made.path, "qcow2", made.backing, made.backing_format, made.virtual_size, 0, 0, 0, 0
    )
