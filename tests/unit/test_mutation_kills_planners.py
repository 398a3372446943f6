"""Tests written for mutants of the cost model and the planners that survived the fast unit tests (issue 15, item 4;
docs/reliability.md, "Mutation score"). Each states a rule the code depends on, not how it is written."""

from __future__ import annotations

import dataclasses

import pytest
from small_histories import (
    BASE,
    IMG,
    VSIZE,
    two_hosts,
    two_vms,
    user_overlay_over_frozen_s2,
    vm_with,
)

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.domain.errors import (
    BadInput,
    BadPath,
    BranchPointRefused,
    Refused,
    StrategyNotAllowed,
    UnknownDisk,
)
from snapledger.domain.images import OwnerClass
from snapledger.domain.steps import (
    Commit,
    CreateOverlay,
    DeleteFile,
    DetachImage,
    Pull,
    ReleaseImage,
    SetActive,
)
from snapledger.projections.cost import CostModel
from snapledger.projections.dag import ImageDag
from snapledger.projections.planners import plan_swap

MIB = 1 << 20
GIB = 1 << 30
OVERHEAD = CostModel().per_step_seconds


# --- the cost model (projections/cost.py): the calibration docs/qemu-img-techniques.md measured ---


def test_the_cost_model_is_calibrated_as_documented() -> None:
    model = CostModel()
    assert model.copy_bytes_per_second == 400 * MIB
    assert model.flatten_scan_seconds_per_gib == 0.14
    assert model.in_chain_scan_seconds_per_gib == 0.002
    assert 0 < model.per_step_seconds < 0.01


def test_moving_bytes_costs_their_size_over_the_copy_rate_plus_one_step() -> None:
    model = CostModel()
    assert model.seconds(Commit(top="/t", base="/b", bytes=400 * MIB)) == pytest.approx(1 + OVERHEAD)
    assert model.seconds(Commit(top="/t", base="/b", bytes=200 * MIB)) == pytest.approx(
        0.5 + OVERHEAD
    )
    assert model.seconds(DeleteFile(path="/d")) == pytest.approx(OVERHEAD)
    faster = CostModel(copy_bytes_per_second=800 * MIB)
    assert faster.seconds(Commit(top="/t", base="/b", bytes=400 * MIB)) == pytest.approx(
        0.5 + OVERHEAD
    )


def test_a_flatten_pays_for_walking_the_whole_image_and_a_pull_in_the_chain_barely() -> None:
    model = CostModel()
    flatten = Pull(image="/i", new_backing=None, new_backing_format=None, scanned_bytes=2 * GIB)
    in_chain = Pull(image="/i", new_backing="/b", new_backing_format="qcow2", scanned_bytes=2 * GIB)
    assert model.seconds(flatten) == pytest.approx(OVERHEAD + 0.28)
    assert model.seconds(in_chain) == pytest.approx(OVERHEAD + 0.004)
    half = Pull(image="/i", new_backing=None, new_backing_format=None, scanned_bytes=GIB // 2)
    assert model.seconds(half) == pytest.approx(OVERHEAD + 0.07)  # no rounding to whole GiB
    moving = dataclasses.replace(flatten, bytes=400 * MIB)
    assert model.seconds(moving) == pytest.approx(OVERHEAD + 1 + 0.28)


def test_steps_in_the_ledger_alone_cost_nothing_and_a_plan_costs_the_sum_of_its_steps() -> None:
    model = CostModel()
    assert model.seconds(SetActive(disk="vda", path="/p")) == 0.0
    steps = [
        CreateOverlay(path="/o", backing="/b", backing_format="qcow2", virtual_size=GIB),
        Commit(top="/t", base="/b", bytes=400 * MIB),
        SetActive(disk="vda", path="/p"),
    ]
    assert model.total(steps) == pytest.approx(sum(model.seconds(s) for s in steps))
    assert model.total(steps) == pytest.approx(2 * OVERHEAD + 1)


def test_a_cost_model_is_a_value_that_cannot_be_changed_in_place() -> None:
    model = CostModel(per_step_seconds=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.per_step_seconds = 0.0  # type: ignore[misc]
    assert model == CostModel(per_step_seconds=0.5)


# --- a new disk's chain (projections/planners.py, check_new_disk_chain) ---------------------------


def test_no_vm_may_start_on_an_image_backed_by_the_image_another_vm_writes() -> None:
    storage, ledger = two_vms()
    storage.make_image("/vms/b/vda.qcow2", 16 * CLUSTER, {1: 0x22}, backing="/vms/a/vda.qcow2")
    with pytest.raises(Refused, match="active image of a/vda"):
        ledger.adopt("b", {"vda": "/vms/b/vda.qcow2"}, pools=["/vms/a"])
    assert "b" not in ledger.view.vms
    storage.make_image("/vms/b/own.qcow2", 16 * CLUSTER, {})
    ledger.adopt("b", {"vda": "/vms/b/own.qcow2"}, pools=["/vms/a"])
    with pytest.raises(Refused, match="active image of a/vda"):
        ledger.swap_disk("b", "vda", "/vms/b/vda.qcow2")
    assert ledger.vm("b").disks["vda"] == "/vms/b/own.qcow2"


def test_a_swap_may_put_an_overlay_over_the_image_it_takes_out_of_use() -> None:
    storage, ledger = two_vms()
    storage.make_image("/vms/a/over.qcow2", 16 * CLUSTER, {2: 0x33}, backing="/vms/a/vda.qcow2")
    ledger.swap_disk("a", "vda", "/vms/a/over.qcow2")
    assert ledger.vm("a").disks["vda"] == "/vms/a/over.qcow2"
    assert storage.read_all("/vms/a/over.qcow2") == {0: 0x11, 2: 0x33}


# --- snapshot and delete plans (projections/planners.py) ------------------------------------------



def test_two_disks_may_not_be_given_the_same_overlay() -> None:
    storage, ledger = vm_with(snapshots=0, disks=("vda", "vdb"))
    files = dict(storage.files)
    with pytest.raises(BadPath, match="same overlay"):
        ledger.snapshot("vm", "s1", overlays={"vda": f"{IMG}/x.qcow2", "vdb": f"{IMG}/x.qcow2"})
    assert dict(storage.files) == files and ledger.vm("vm").snapshots == {}


def test_a_snapshot_whose_only_child_is_the_users_file_is_deleted_without_writing_it() -> None:
    storage, ledger, own = user_overlay_over_frozen_s2()
    before = storage.read_all(own)
    with pytest.raises(StrategyNotAllowed, match="not managed"):
        ledger.delete("vm", "s2", strategy="pull")
    plan = ledger.delete("vm", "s2")
    assert plan.steps == () and "metadata only" in plan.strategy
    assert storage.read_all(own) == before


def test_pulling_into_branches_refuses_a_branch_that_is_the_users_file() -> None:
    """s2's frozen image is the base of two branches, s3's frozen image and the user's overlay."""
    storage, ledger = vm_with(snapshots=2)
    ledger.snapshot("vm", "s3")
    ledger.revert("vm", "s2")
    frozen = ledger.vm("vm").snapshots["s2"].disks["vda"]
    own = f"{IMG}/own.qcow2"
    storage.make_image(own, VSIZE, {9: 0x99}, backing=frozen)
    ledger.swap_disk("vm", "vda", own)
    ledger.gc("vm", include_detached=True)
    assert len([c for c in storage.files if storage.files[c].backing == frozen]) == 2
    before = storage.read_all(own)
    with pytest.raises(StrategyNotAllowed, match="not managed"):
        ledger.delete("vm", "s2", branches="pull")
    assert storage.read_all(own) == before and "s2" in ledger.vm("vm").snapshots


def test_a_hosts_own_file_at_a_path_another_host_uses_is_its_own_even_over_a_shared_base() -> None:
    """Host a's VM uses its local /a/w.qcow2 over the shared template; host b's own file at the
    same path (over the same shared template) is another file: b may adopt it."""
    storage = SimulatedStorage()
    storage.make_image("/shared/t.qcow2", VSIZE, {0: 0x10})
    storage.make_image("/a/w.qcow2", VSIZE, {1: 0x11}, backing="/shared/t.qcow2")
    a, b = two_hosts(storage)
    a.adopt("va", {"vda": "/a/w.qcow2"}, shared=["/shared"])
    b.adopt("vb", {"vda": "/a/w.qcow2"}, shared=["/shared"])
    assert b.vm("vb").home == "hostb" and b.vm("vb").disks["vda"] == "/a/w.qcow2"


def test_an_overlay_may_only_be_chosen_for_a_disk_the_snapshot_captures() -> None:
    storage, ledger = vm_with(snapshots=0, disks=("vda", "vdb"))
    files = dict(storage.files)
    with pytest.raises(UnknownDisk):
        ledger.snapshot("vm", "s1", overlays={"vdz": f"{IMG}/x.qcow2"})
    with pytest.raises(BadInput, match="not captured"):
        ledger.snapshot("vm", "s1", overlays={"vdb": f"{IMG}/x.qcow2"}, exclude=["vdb"])
    assert dict(storage.files) == files and ledger.vm("vm").snapshots == {}


def test_a_refusal_of_a_new_disk_names_the_new_image_and_the_image_it_rests_on() -> None:
    storage, ledger = vm_with(snapshots=2)
    frozen = ledger.vm("vm").snapshots["s2"].disks["vda"]  # base.s1, over base.qcow2
    with pytest.raises(Refused) as caught:
        ledger.adopt("vm2", {"vda": frozen})
    assert str(caught.value).startswith(f"{frozen} is used by VM vm")
    active = ledger.vm("vm").disks["vda"]
    storage.make_image("/vms/vm2/d.qcow2", VSIZE, {}, backing=active)
    with pytest.raises(Refused) as caught:
        ledger.adopt("vm2", {"vda": "/vms/vm2/d.qcow2"}, pools=[IMG])
    assert str(caught.value).startswith(f"/vms/vm2/d.qcow2 is backed by {active}, the active image")


def test_another_hosts_active_image_at_a_path_is_not_this_hosts_file_at_that_path() -> None:
    storage = SimulatedStorage()
    storage.make_image("/a/w.qcow2", VSIZE, {0: 0x10})
    storage.make_image("/b/x.qcow2", VSIZE, {1: 0x11}, backing="/a/w.qcow2")
    a, b = two_hosts(storage)
    a.adopt("va", {"vda": "/a/w.qcow2"})
    b.adopt("vb", {"vda": "/b/x.qcow2"}, pools=["/a"])  # hostb's own /a/w.qcow2
    assert b.vm("vb").disks["vda"] == "/b/x.qcow2"


def test_a_users_frozen_image_no_snapshot_or_child_needs_is_released_not_deleted() -> None:
    storage, ledger = vm_with(snapshots=1)  # s1 freezes the adopted base.qcow2
    storage.make_image(f"{IMG}/fresh.qcow2", VSIZE, {})
    ledger.swap_disk("vm", "vda", f"{IMG}/fresh.qcow2")
    ledger.gc("vm", include_detached=True)  # base.s1, the overlay over base.qcow2, goes
    plan = ledger.delete("vm", "s1")
    assert plan.steps == (ReleaseImage(BASE),)  # forgotten, left on disk: it rests on nothing
    assert storage.read_all(BASE) == {0: 0x10}


def test_the_strategy_says_which_way_was_chosen_over_which() -> None:
    storage, ledger = vm_with(snapshots=2)
    plan = ledger.delete("vm", "s2", dry_run=True)
    chosen, _, other = plan.strategy.partition(", cheaper than ")
    assert {chosen.removeprefix("vda: "), other} == {"commit", "pull"}


def test_a_file_gone_from_one_disk_does_not_stop_a_merge_on_another() -> None:
    storage, ledger = vm_with(snapshots=2, disks=("vda", "vdb"))
    gone = ledger.vm("vm").snapshots["s1"].disks["vdb"]
    storage.delete(gone)
    ledger.reconcile("vm")
    assert ledger.vm("vm").missing_images()
    plan = ledger.delete("vm", "s2", dry_run=True)
    assert any(isinstance(s, Commit | Pull) for s in plan.steps), plan.strategy


def test_a_swap_plan_makes_the_new_image_active() -> None:
    storage, ledger = two_vms()
    storage.make_image("/vms/a/over.qcow2", 16 * CLUSTER, {}, backing="/vms/a/vda.qcow2")
    plan = plan_swap(ledger.view, "a", "vda", ["/vms/a/over.qcow2", "/vms/a/vda.qcow2"])
    assert plan.steps == (SetActive("vda", "/vms/a/over.qcow2"),)


def test_a_taken_overlay_path_is_refused_with_the_way_out_only_when_it_was_not_chosen() -> None:
    storage, ledger = vm_with(snapshots=0)
    storage.make_image(f"{IMG}/base.s1", VSIZE, {})  # where s1's overlay would go
    with pytest.raises(BadPath, match="choose another with --overlay vda=PATH"):
        ledger.snapshot("vm", "s1")
    with pytest.raises(BadPath) as caught:
        ledger.snapshot("vm", "s1", overlays={"vda": f"{IMG}/base.s1"})
    assert "--overlay" not in str(caught.value)


def test_another_hosts_vm_does_not_end_the_check_of_this_hosts_vms() -> None:
    storage = SimulatedStorage()
    storage.make_image("/a/w.qcow2", VSIZE, {})
    storage.make_image("/b/y.qcow2", VSIZE, {})
    storage.make_image("/b/z.qcow2", VSIZE, {}, backing="/b/y.qcow2")
    a, b = two_hosts(storage)
    a.adopt("va", {"vda": "/a/w.qcow2"})
    b.adopt("vb1", {"vda": "/b/y.qcow2"})
    with pytest.raises(Refused, match="active image of vb1/vda"):
        b.adopt("vb2", {"vda": "/b/z.qcow2"})


def test_a_branch_point_refusal_says_what_holds_each_branch() -> None:
    storage, ledger = vm_with(snapshots=2)
    ledger.snapshot("vm", "s3")
    ledger.revert("vm", "s2")
    with pytest.raises(BranchPointRefused) as caught:
        ledger.delete("vm", "s2")
    assert "holds snapshot s3 of vm" in str(caught.value)
    assert "active image of vm/vda" in str(caught.value)


def test_an_abandoned_present_a_strange_file_rests_on_is_kept_as_detached() -> None:
    storage, ledger = vm_with(snapshots=1)
    present = ledger.vm("vm").disks["vda"]
    storage.make_image(f"{IMG}/users-clone.qcow2", VSIZE, {}, backing=present)  # the ledger's unknown
    plan = ledger.revert("vm", "s1")
    assert DetachImage(present) in plan.steps
    assert ledger.vm("vm").images[present].detached and storage.exists(present)


def test_another_hosts_vm_on_shared_storage_is_checked_disk_by_disk() -> None:
    """Host a's VM has a local disk and one in the shared directory; host b's new disk rests on
    the shared one, which host a's VM keeps writing."""
    storage = SimulatedStorage()
    storage.make_image("/a/w.qcow2", VSIZE, {})
    storage.make_image("/shared/s.qcow2", VSIZE, {})
    storage.make_image("/b/z.qcow2", VSIZE, {}, backing="/shared/s.qcow2")
    a, b = two_hosts(storage)
    a.adopt("va", {"vda": "/a/w.qcow2", "vdb": "/shared/s.qcow2"}, shared=["/shared"])
    with pytest.raises(Refused, match="active image of va/vdb"):
        b.adopt("vb", {"vda": "/b/z.qcow2"}, shared=["/shared"])


@pytest.mark.parametrize(("disk", "other"), [("vda", "vdb"), ("vdb", "vda")])
def test_a_vm_may_not_swap_a_disk_onto_the_image_its_other_disk_writes(disk: str, other: str) -> None:
    storage, ledger = vm_with(snapshots=0, disks=("vda", "vdb"))
    written = ledger.vm("vm").disks[other]
    storage.make_image(f"{IMG}/over.qcow2", VSIZE, {}, backing=written)
    with pytest.raises(Refused, match=f"active image of vm/{other}"):
        ledger.swap_disk("vm", disk, f"{IMG}/over.qcow2")


def test_a_commit_never_rebases_the_users_file_resting_on_the_image_it_removes() -> None:
    """s2's frozen image has one child, s3's frozen image, on which the user's own overlay (the
    active disk) rests: committing would rewrite the user's file, so the delete pulls."""
    storage, ledger = vm_with(snapshots=3)
    frozen_s3 = ledger.vm("vm").snapshots["s3"].disks["vda"]
    own = f"{IMG}/own.qcow2"
    storage.make_image(own, VSIZE, {9: 0x99}, backing=frozen_s3)
    ledger.swap_disk("vm", "vda", own)
    ledger.gc("vm", include_detached=True)
    plan = ledger.delete("vm", "s2", dry_run=True)
    assert all(own not in (getattr(s, "path", None), getattr(s, "image", None)) for s in plan.steps)
    assert not any(isinstance(s, Commit) for s in plan.steps), plan.strategy
    with pytest.raises(StrategyNotAllowed, match="not managed"):
        ledger.delete("vm", "s2", strategy="commit")


def test_a_forced_strategy_on_a_snapshot_left_as_metadata_only_is_not_refused() -> None:
    """A snapshot whose files can't move (one of them is gone) loses only its metadata, with or
    without --strategy: forcing a way to merge matters only where one child would be merged."""
    storage, ledger = vm_with(snapshots=2)  # base <- base.s1 <- base.s2 (active)
    ledger.revert("vm", "s1")  # base.s2 goes; base.s1 (s2's) has no child, base has two
    frozen_s2 = ledger.vm("vm").snapshots["s2"].disks["vda"]
    storage.delete(frozen_s2)
    ledger.reconcile("vm")
    for strategy in ("commit", "pull"):
        childless = ledger.delete("vm", "s2", strategy=strategy, dry_run=True)
        assert childless.steps == () and "is gone" in childless.strategy
        two_children = ledger.delete("vm", "s1", strategy=strategy, dry_run=True)
        assert two_children.steps == () and "is gone" in two_children.strategy


def test_a_deleted_snapshot_leaves_its_read_only_image_as_it_is_even_with_no_child() -> None:
    """A snapshot imported with the VM freezes an image found below the adopted disk (read-only);
    once nothing rests on it, deleting the snapshot still only drops the snapshot's metadata."""
    storage = SimulatedStorage()
    storage.make_image("/vms/base.qcow2", VSIZE, {0: 0x10})
    storage.make_image("/vms/top.qcow2", VSIZE, {1: 0x11}, backing="/vms/base.qcow2")
    storage.make_image("/vms/fresh.qcow2", VSIZE, {})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("vm", {"vda": "/vms/top.qcow2"})
    vm = ledger.vm("vm")
    at = "2026-01-01T00:00:00+00:00"
    made = {"created": at, "domain_xml": None, "description": None}
    vm.import_snapshots([{"name": "a", "parent": None, "disks": {"vda": "/vms/base.qcow2"}, **made}],
                        current="a", at=at)
    ledger.save(vm)
    ledger.swap_disk("vm", "vda", "/vms/fresh.qcow2")
    ledger.gc("vm", include_detached=True)  # the user's top.qcow2 is let go; then they remove it
    storage.delete("/vms/top.qcow2")
    dag = ImageDag(ledger.refresh())
    assert dag.nodes["/vms/base.qcow2"].owner is OwnerClass.READ_ONLY
    assert dag.needed_children("/vms/base.qcow2") == []
    plan = ledger.delete("vm", "a")
    assert plan.steps == () and "/vms/base.qcow2 is read-only" in plan.strategy
    assert "/vms/base.qcow2" in ledger.vm("vm").images and storage.read_all("/vms/base.qcow2") == {0: 0x10}
