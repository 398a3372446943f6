"""Tests written for mutants that survived the fast unit tests (issue 15, item 4; docs/reliability.md,
"Mutation score"). Each states a rule the planners depend on, not how the code is written."""

from __future__ import annotations

import dataclasses

import pytest
from dag_reference import eager_dag, lazy_dag

from snapledger.adapters.compose import ledger_service, this_host
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import (
    BadInput,
    BadPath,
    BranchPointRefused,
    OperationInProgress,
    Refused,
    StrategyNotAllowed,
    UnknownDisk,
)
from snapledger.domain.images import Origin, OwnerClass
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
from snapledger.projections.dag import ImageDag, owner_class
from snapledger.projections.explain import explain_image
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


def _two_vms() -> tuple[SimulatedStorage, Snapledger]:
    storage = SimulatedStorage()
    storage.make_image("/vms/a/vda.qcow2", 16 * CLUSTER, {0: 0x11})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": "/vms/a/vda.qcow2"})
    return storage, ledger


def test_no_vm_may_start_on_an_image_backed_by_the_image_another_vm_writes() -> None:
    storage, ledger = _two_vms()
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
    storage, ledger = _two_vms()
    storage.make_image("/vms/a/over.qcow2", 16 * CLUSTER, {2: 0x33}, backing="/vms/a/vda.qcow2")
    ledger.swap_disk("a", "vda", "/vms/a/over.qcow2")
    assert ledger.vm("a").disks["vda"] == "/vms/a/over.qcow2"
    assert storage.read_all("/vms/a/over.qcow2") == {0: 0x11, 2: 0x33}


# --- snapshot and delete plans (projections/planners.py) ------------------------------------------

IMG = "/images"
BASE = f"{IMG}/base.qcow2"
VSIZE = 16 * CLUSTER


def _vm(*, snapshots: int, disks: tuple[str, ...] = ("vda",)) -> tuple[SimulatedStorage, Snapledger]:
    """VM `vm` on base images in /images with snapshots s1..sN, each layer written."""
    storage = SimulatedStorage()
    paths = {}
    for disk in disks:
        paths[disk] = BASE if disk == "vda" else f"{IMG}/{disk}.qcow2"
        storage.make_image(paths[disk], VSIZE, {0: 0x10})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("vm", paths)
    for n in range(1, snapshots + 1):
        ledger.snapshot("vm", f"s{n}")
        storage.write(ledger.vm("vm").disks["vda"], n, 0x20 + n)
    return storage, ledger


def test_two_disks_may_not_be_given_the_same_overlay() -> None:
    storage, ledger = _vm(snapshots=0, disks=("vda", "vdb"))
    files = dict(storage.files)
    with pytest.raises(BadPath, match="same overlay"):
        ledger.snapshot("vm", "s1", overlays={"vda": f"{IMG}/x.qcow2", "vdb": f"{IMG}/x.qcow2"})
    assert dict(storage.files) == files and ledger.vm("vm").snapshots == {}


def _user_overlay_over_frozen_s2() -> tuple[SimulatedStorage, Snapledger, str]:
    """s2's frozen image (managed) has one child left: the user's own overlay, the active disk."""
    storage, ledger = _vm(snapshots=2)
    frozen = ledger.vm("vm").snapshots["s2"].disks["vda"]
    own = f"{IMG}/own.qcow2"
    storage.make_image(own, VSIZE, {9: 0x99}, backing=frozen)
    ledger.swap_disk("vm", "vda", own)
    ledger.gc("vm", include_detached=True)  # the managed present it replaced goes
    assert [c for c in storage.files if storage.files[c].backing == frozen] == [own]
    return storage, ledger, own


def test_a_snapshot_whose_only_child_is_the_users_file_is_deleted_without_writing_it() -> None:
    storage, ledger, own = _user_overlay_over_frozen_s2()
    before = storage.read_all(own)
    with pytest.raises(StrategyNotAllowed, match="not managed"):
        ledger.delete("vm", "s2", strategy="pull")
    plan = ledger.delete("vm", "s2")
    assert plan.steps == () and "metadata only" in plan.strategy
    assert storage.read_all(own) == before


def test_pulling_into_branches_refuses_a_branch_that_is_the_users_file() -> None:
    """s2's frozen image is the base of two branches, s3's frozen image and the user's overlay."""
    storage, ledger = _vm(snapshots=2)
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
    app = LedgerApplication("memory:")
    a = ledger_service(app, storage, host="hosta")
    b = ledger_service(app, storage, host="hostb")
    a.adopt("va", {"vda": "/a/w.qcow2"}, shared=["/shared"])
    b.adopt("vb", {"vda": "/a/w.qcow2"}, shared=["/shared"])
    assert b.vm("vb").home == "hostb" and b.vm("vb").disks["vda"] == "/a/w.qcow2"


def test_an_overlay_may_only_be_chosen_for_a_disk_the_snapshot_captures() -> None:
    storage, ledger = _vm(snapshots=0, disks=("vda", "vdb"))
    files = dict(storage.files)
    with pytest.raises(UnknownDisk):
        ledger.snapshot("vm", "s1", overlays={"vdz": f"{IMG}/x.qcow2"})
    with pytest.raises(BadInput, match="not captured"):
        ledger.snapshot("vm", "s1", overlays={"vdb": f"{IMG}/x.qcow2"}, exclude=["vdb"])
    assert dict(storage.files) == files and ledger.vm("vm").snapshots == {}


def test_a_refusal_of_a_new_disk_names_the_new_image_and_the_image_it_rests_on() -> None:
    storage, ledger = _vm(snapshots=2)
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
    app = LedgerApplication("memory:")
    a = ledger_service(app, storage, host="hosta")
    b = ledger_service(app, storage, host="hostb")
    a.adopt("va", {"vda": "/a/w.qcow2"})
    b.adopt("vb", {"vda": "/b/x.qcow2"}, pools=["/a"])  # hostb's own /a/w.qcow2
    assert b.vm("vb").disks["vda"] == "/b/x.qcow2"


def test_a_users_frozen_image_no_snapshot_or_child_needs_is_released_not_deleted() -> None:
    storage, ledger = _vm(snapshots=1)  # s1 freezes the adopted base.qcow2
    storage.make_image(f"{IMG}/fresh.qcow2", VSIZE, {})
    ledger.swap_disk("vm", "vda", f"{IMG}/fresh.qcow2")
    ledger.gc("vm", include_detached=True)  # base.s1, the overlay over base.qcow2, goes
    plan = ledger.delete("vm", "s1")
    assert plan.steps == (ReleaseImage(BASE),)  # forgotten, left on disk: it rests on nothing
    assert storage.read_all(BASE) == {0: 0x10}


def test_the_strategy_says_which_way_was_chosen_over_which() -> None:
    storage, ledger = _vm(snapshots=2)
    plan = ledger.delete("vm", "s2", dry_run=True)
    chosen, _, other = plan.strategy.partition(", cheaper than ")
    assert {chosen.removeprefix("vda: "), other} == {"commit", "pull"}


def test_a_file_gone_from_one_disk_does_not_stop_a_merge_on_another() -> None:
    storage, ledger = _vm(snapshots=2, disks=("vda", "vdb"))
    gone = ledger.vm("vm").snapshots["s1"].disks["vdb"]
    storage.delete(gone)
    ledger.reconcile("vm")
    assert ledger.vm("vm").missing_images()
    plan = ledger.delete("vm", "s2", dry_run=True)
    assert any(isinstance(s, Commit | Pull) for s in plan.steps), plan.strategy


def test_a_swap_plan_makes_the_new_image_active() -> None:
    storage, ledger = _two_vms()
    storage.make_image("/vms/a/over.qcow2", 16 * CLUSTER, {}, backing="/vms/a/vda.qcow2")
    plan = plan_swap(ledger.view, "a", "vda", ["/vms/a/over.qcow2", "/vms/a/vda.qcow2"])
    assert plan.steps == (SetActive("vda", "/vms/a/over.qcow2"),)


def test_a_taken_overlay_path_is_refused_with_the_way_out_only_when_it_was_not_chosen() -> None:
    storage, ledger = _vm(snapshots=0)
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
    app = LedgerApplication("memory:")
    a = ledger_service(app, storage, host="hosta")
    b = ledger_service(app, storage, host="hostb")
    a.adopt("va", {"vda": "/a/w.qcow2"})
    b.adopt("vb1", {"vda": "/b/y.qcow2"})
    with pytest.raises(Refused, match="active image of vb1/vda"):
        b.adopt("vb2", {"vda": "/b/z.qcow2"})


def test_a_branch_point_refusal_says_what_holds_each_branch() -> None:
    storage, ledger = _vm(snapshots=2)
    ledger.snapshot("vm", "s3")
    ledger.revert("vm", "s2")
    with pytest.raises(BranchPointRefused) as caught:
        ledger.delete("vm", "s2")
    assert "holds snapshot s3 of vm" in str(caught.value)
    assert "active image of vm/vda" in str(caught.value)


def test_an_abandoned_present_a_strange_file_rests_on_is_kept_as_detached() -> None:
    storage, ledger = _vm(snapshots=1)
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
    app = LedgerApplication("memory:")
    a = ledger_service(app, storage, host="hosta")
    b = ledger_service(app, storage, host="hostb")
    a.adopt("va", {"vda": "/a/w.qcow2", "vdb": "/shared/s.qcow2"}, shared=["/shared"])
    with pytest.raises(Refused, match="active image of va/vdb"):
        b.adopt("vb", {"vda": "/b/z.qcow2"}, shared=["/shared"])


@pytest.mark.parametrize(("disk", "other"), [("vda", "vdb"), ("vdb", "vda")])
def test_a_vm_may_not_swap_a_disk_onto_the_image_its_other_disk_writes(disk: str, other: str) -> None:
    storage, ledger = _vm(snapshots=0, disks=("vda", "vdb"))
    written = ledger.vm("vm").disks[other]
    storage.make_image(f"{IMG}/over.qcow2", VSIZE, {}, backing=written)
    with pytest.raises(Refused, match=f"active image of vm/{other}"):
        ledger.swap_disk("vm", disk, f"{IMG}/over.qcow2")


def test_a_commit_never_rebases_the_users_file_resting_on_the_image_it_removes() -> None:
    """s2's frozen image has one child, s3's frozen image, on which the user's own overlay (the
    active disk) rests: committing would rewrite the user's file, so the delete pulls."""
    storage, ledger = _vm(snapshots=3)
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


# --- the image DAG (projections/dag.py): the lazy DAG against the one built at once --------------


def _branches() -> tuple[SimulatedStorage, Snapledger]:
    storage, ledger = _vm(snapshots=2)
    ledger.snapshot("vm", "s3")
    ledger.revert("vm", "s2")
    return storage, ledger


def _swapped() -> tuple[SimulatedStorage, Snapledger]:
    storage, ledger = _vm(snapshots=3)
    frozen = ledger.vm("vm").snapshots["s3"].disks["vda"]
    storage.make_image(f"{IMG}/own.qcow2", VSIZE, {9: 0x99}, backing=frozen)
    ledger.swap_disk("vm", "vda", f"{IMG}/own.qcow2")  # base.s3 detached, kept
    ledger.snapshot("vm", "s4")
    return storage, ledger


def _shared_frozen() -> tuple[SimulatedStorage, Snapledger]:
    storage, ledger = _branches()
    frozen = ledger.vm("vm").snapshots["s2"].disks["vda"]
    storage.make_image("/vms/vm2/d.qcow2", VSIZE, {}, backing=frozen)
    ledger.adopt("vm2", {"vda": "/vms/vm2/d.qcow2"}, pools=[IMG])
    ledger.snapshot("vm2", "t1")
    return storage, ledger


def _template() -> tuple[SimulatedStorage, Snapledger]:
    storage = SimulatedStorage()
    storage.make_image("/pool/t.qcow2", VSIZE, {0: 0x10})
    storage.make_image("/pool/u.qcow2", VSIZE, {1: 0x11}, backing="/pool/t.qcow2")
    storage.make_image("/vms/a/a.qcow2", VSIZE, {}, backing="/pool/u.qcow2")
    storage.make_image("/vms/b/b.qcow2", VSIZE, {}, backing="/pool/t.qcow2")
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": "/vms/a/a.qcow2"}, pools=["/pool"])
    ledger.adopt("b", {"vda": "/vms/b/b.qcow2"}, pools=["/pool"])
    ledger.snapshot("a", "s1")
    ledger.snapshot("b", "s1")
    return storage, ledger


def _crashed() -> tuple[SimulatedStorage, Snapledger]:
    """A delete killed after its first storage step: the operation is open."""
    storage, ledger = _vm(snapshots=3)
    storage.inject(crash_at=1)
    with pytest.raises(SimulatedCrash):
        ledger.delete("vm", "s2")
    return storage, ledger


def _two_hosts_shared() -> tuple[SimulatedStorage, Snapledger]:
    """One template in a shared directory under a VM of host a (adopted first) and of host b."""
    storage = SimulatedStorage()
    storage.make_image("/shared/t.qcow2", VSIZE, {0: 0x10})
    storage.make_image("/a/a.qcow2", VSIZE, {}, backing="/shared/t.qcow2")
    storage.make_image("/b/b.qcow2", VSIZE, {}, backing="/shared/t.qcow2")
    app = LedgerApplication("memory:")
    a = ledger_service(app, storage, host="hosta")
    b = ledger_service(app, storage, host="hostb")
    a.adopt("va", {"vda": "/a/a.qcow2"}, shared=["/shared"])
    b.adopt("vb", {"vda": "/b/b.qcow2"}, shared=["/shared"])
    b.snapshot("vb", "s1")
    # hostb's VM freezes an image in the shared directory that host a's VM then rests on
    storage.make_image("/shared/z.qcow2", VSIZE, {2: 0x12})
    b.adopt("zb", {"vda": "/shared/z.qcow2"}, shared=["/shared"])
    b.snapshot("zb", "s1")
    storage.make_image("/a/aa.qcow2", VSIZE, {}, backing="/shared/z.qcow2")
    a.adopt("aa", {"vda": "/a/aa.qcow2"}, shared=["/shared"])
    return storage, b


SCENARIOS = {
    "chain": lambda: _vm(snapshots=3),
    "branches": _branches,
    "swapped": _swapped,
    "shared frozen": _shared_frozen,
    "template": _template,
    "crashed": _crashed,
    "two hosts": _two_hosts_shared,
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_lazy_dag_is_the_one_built_at_once(scenario: str) -> None:
    storage, ledger = SCENARIOS[scenario]()
    view = ledger.view
    present = {vm.disks["vda"] for vm in view.live_vms().values()}
    strange = {p: [f"{p}.users-clone"] for p in sorted(present)[:1]}
    for options in [
        {},
        {"ignore_detached_of": "vm"},
        {"dependants": strange},
        {"home": this_host()},
        {"home": "hostb"},
    ]:
        whole = eager_dag(view, **options)
        assert lazy_dag(view, **options) == whole, options
        for path in sorted(whole, reverse=True):  # one image first, as a planner asks
            one = ImageDag(view, **options)
            assert one.needed(path) == bool(whole[path]["needs"]), path
            assert one.needed_children(path) == [
                c for c in whole[path]["children"] if whole[c]["needs"]
            ], path
            chain = [path]
            while (below := whole[chain[-1]]["facts"].backing) in whole:
                chain.append(below)
            assert one.chain(path) == chain and one.depth(path) == len(chain)
            assert one.dependants(path) == list(options.get("dependants", {}).get(path, []))
        dag = ImageDag(view, **options)
        assert len(dag.nodes) == len(whole) and len(dag.children) == sum(
            1 for p in whole if whole[p]["children"]
        )
        assert "/nowhere.qcow2" not in dag.nodes and None not in dag.nodes


def test_who_owns_an_image() -> None:
    """semantics.md, "Who owns an image": read-only if two or more VMs use it or it was found
    below an adopted disk; else adopted if any holder adopted it; else managed."""
    assert owner_class({"a"}, {Origin.MANAGED}) is OwnerClass.MANAGED
    assert owner_class(set(), {Origin.MANAGED}) is OwnerClass.MANAGED
    assert owner_class({"a"}, {Origin.ADOPTED}) is OwnerClass.ADOPTED
    assert owner_class({"a", "b"}, {Origin.MANAGED}) is OwnerClass.READ_ONLY
    assert owner_class({"a", "b", "c"}, {Origin.ADOPTED}) is OwnerClass.READ_ONLY
    assert owner_class({"a"}, {Origin.FOUND, Origin.ADOPTED}) is OwnerClass.READ_ONLY


def test_what_may_be_written_and_deleted() -> None:
    storage, ledger = _swapped()
    view, vm = ledger.view, ledger.vm("vm")
    dag = ImageDag(view)
    detached = vm.snapshots["s3"].disks["vda"]  # base.s2, frozen by s3; base.s3 is detached
    leftover = next(p for p, r in vm.images.items() if r.detached)
    assert not dag.nodes[leftover].may_delete  # detached: kept until gc --include-detached
    assert ImageDag(view, ignore_detached_of="vm").nodes[leftover].may_delete
    assert not dag.nodes[BASE].may_delete  # the user's file, frozen by s1
    assert not dag.nodes[detached].may_delete
    assert not dag.may_write(leftover, "vm")  # detached: kept as it is until discarded
    assert not dag.may_write(BASE, "vm")  # frozen by s1
    assert dag.may_write(BASE, "vm", ignoring_snapshot="s1")  # its children are the caller's
    s1_child = vm.snapshots["s2"].disks["vda"]
    assert not dag.may_write(s1_child, "vm")
    assert dag.may_write(s1_child, "vm", ignoring_snapshot="s2")
    assert not dag.may_write(s1_child, "vm", ignoring_snapshot="s3")
    assert not dag.may_write(s1_child, "other", ignoring_snapshot="s2")
    assert not explain_image(view, "vm", leftover).may_delete


def test_a_template_no_one_needs_any_more_is_never_deleted() -> None:
    storage = SimulatedStorage()
    storage.make_image("/pool/t.qcow2", VSIZE, {0: 0x10})
    storage.make_image("/vms/a/a.qcow2", VSIZE, {}, backing="/pool/t.qcow2")
    storage.make_image("/vms/a/fresh.qcow2", VSIZE, {})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": "/vms/a/a.qcow2"}, pools=["/pool"])
    ledger.swap_disk("a", "vda", "/vms/a/fresh.qcow2")
    dag = ImageDag(ledger.view, ignore_detached_of="a")
    assert dag.nodes["/pool/t.qcow2"].owner is OwnerClass.READ_ONLY
    assert not dag.nodes["/pool/t.qcow2"].may_delete
    ledger.gc("a", include_detached=True)
    assert storage.read_all("/pool/t.qcow2") == {0: 0x10}
    assert storage.exists("/vms/a/a.qcow2")


# --- the VM aggregate (domain/vm.py) ------------------------------------------------------------

AT = "2026-01-01T00:00:00+00:00"


def test_only_the_operation_in_progress_may_be_carried_on() -> None:
    storage, ledger = _crashed()
    vm = ledger.vm("vm")
    assert vm.operation is not None
    with pytest.raises(OperationInProgress):
        vm.complete_step("not-this-one", vm.operation.done, [])
    with pytest.raises(OperationInProgress):
        vm.resume_operation("not-this-one", {"pid": 1}, AT)
    _, other = _vm(snapshots=1)
    with pytest.raises(OperationInProgress):
        other.vm("vm").fail_operation("no-operation", 0, "boom")


def test_a_resumed_operation_is_recorded_with_its_new_runner() -> None:
    storage, ledger = _crashed()
    vm = ledger.vm("vm")
    op = vm.operation
    assert op is not None
    vm.collect_events()
    vm.resume_operation(op.op_id, {"pid": 4242}, AT)
    assert [type(e).__name__ for e in vm.collect_events()] == ["OperationResumed"]
    assert vm.operation is not None and vm.operation.runner == {"pid": 4242}


def test_our_own_pivot_supersedes_the_operators_word_for_that_step() -> None:
    storage, ledger = _crashed()
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
    storage, ledger, own = _user_overlay_over_frozen_s2()
    frozen = ledger.vm("vm").snapshots["s2"].disks["vda"]
    storage.make_image(f"{IMG}/again.qcow2", VSIZE, {}, backing=frozen)
    ledger.swap_disk("vm", "vda", f"{IMG}/again.qcow2")
    assert ledger.vm("vm").images[own].detached
    ledger.swap_disk("vm", "vda", own)
    assert not ledger.vm("vm").images[own].detached


def test_deleting_a_snapshot_hands_its_children_to_its_parent_and_no_one_else() -> None:
    storage, ledger = _vm(snapshots=3)
    ledger.revert("vm", "s1")
    ledger.snapshot("vm", "s4")
    ledger.delete("vm", "s2")
    parents = {name: s.parent for name, s in ledger.vm("vm").snapshots.items()}
    assert parents == {"s1": None, "s3": "s1", "s4": "s1"}


def test_snapshots_imported_from_another_tool_keep_their_tree() -> None:
    storage, ledger = _vm(snapshots=0)
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
    storage, ledger = _vm(snapshots=1)
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
    storage, ledger = _vm(snapshots=count - 1)
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
    storage, ledger = _vm(snapshots=0)
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
    storage, ledger = _vm(snapshots=0)
    made = {"created": AT, "domain_xml": None, "description": None}
    with pytest.raises(BadInput):
        ledger.vm("vm").import_snapshots(
            [{"name": "a", "parent": None, "disks": {"vda": BASE}, **made}], "nowhere", AT
        )


def test_reconciling_an_image_the_vm_does_not_hold_is_refused_naming_it() -> None:
    storage, ledger = _vm(snapshots=0)
    with pytest.raises(BadInput, match="holds no image /images/stranger.qcow2"):
        ledger.vm("vm").reconcile(observed=[], found=[], gone=["/images/stranger.qcow2"],
                                  disowned=[], at=AT)


def test_an_operation_is_closed_only_when_finished_and_only_as_what_it_is() -> None:
    storage, ledger = _crashed()  # a delete, its first step not done
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
