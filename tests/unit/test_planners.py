"""Planner and service rules of semantics.md over simulated storage: names, bad input, swap-disk,
shared templates, gc, the rebuilt view, and faults."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import (
    BadInput,
    BadName,
    BadPath,
    DuplicateName,
    Refused,
    StorageError,
    StrategyNotAllowed,
    UnknownDisk,
    UnknownSnapshot,
    UnknownVm,
)
from snapledger.domain.names import (
    check_name,
    revert_overlay_path,
    snapshot_overlay_path,
    time_snapshot_name,
)
from snapledger.domain.steps import Commit, DeleteFile, Plan, Pull, ReleaseImage
from snapledger.projections.view import LedgerView
from snapledger.testing.checks import changes

VM = "vm"
BASE = "/images/base.qcow2"
VSIZE = 64 * CLUSTER


def make(*, snapshots: int = 2) -> tuple[SimulatedStorage, Snapledger]:
    """VM `vm` on /images/base.qcow2 with snapshots s1..sN, each layer written with its own byte."""
    storage = SimulatedStorage()
    storage.make_image(BASE, VSIZE, {0: 0x10, 1: 0x10})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt(VM, {"vda": BASE})
    for n in range(1, snapshots + 1):
        ledger.snapshot(VM, f"s{n}")
        write(storage, ledger, n + 1, 0x20 + n)
    return storage, ledger


def write(storage: SimulatedStorage, ledger: Snapledger, cluster: int, pattern: int,
          vm: str = VM) -> None:
    storage.write(ledger.vm(vm).disks["vda"], cluster, pattern)


def events(ledger: Snapledger) -> int:
    return changes(ledger.app)


def contents(storage: SimulatedStorage, ledger: Snapledger, vm: str = VM) -> dict[str, Any]:
    """What every snapshot and the present read, by name."""
    record = ledger.vm(vm)
    out: dict[str, Any] = {n: storage.read_all(s.disks["vda"]) for n, s in record.snapshots.items()}
    out["<present>"] = storage.read_all(record.disks["vda"])
    return out


def assert_views_agree(ledger: Snapledger) -> None:
    rebuilt = LedgerView()
    rebuilt.apply_all(ledger.app.events_after(0))
    assert rebuilt.canonical() == ledger.refresh().canonical()


# ---- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "s1", "0", "_x", "+x", "A.b_c+d-e", "x" * 64, "snap.1-2"])
def test_valid_names(name: str) -> None:
    assert check_name("snapshot", name) == name


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "-a", ".a", "a b", " a", "a/b", "a\n", "é", "a:b", "a*", "a\x00"]
)
def test_invalid_names_are_bad_input(name: str) -> None:
    with pytest.raises(BadName) as caught:
        check_name("snapshot", name)
    assert caught.value.exit_code == 2


def test_a_snapshot_without_a_name_is_named_by_the_utc_time() -> None:
    at = "2026-12-07T09:05:03.123456+01:00"  # the clock's ISO time, here not in UTC
    assert time_snapshot_name(at, lambda name: False) == "20261207-080503"
    taken = {"20261207-080503", "20261207-080503-2"}
    assert time_snapshot_name(at, taken.__contains__) == "20261207-080503-3"
    check_name("snapshot", time_snapshot_name(at, taken.__contains__))
    _, ledger = make(snapshots=0)
    ledger.clock = lambda: at
    for expected in ("20261207-080503", "20261207-080503-2"):  # two in the same second
        name = ledger.new_snapshot_name(VM)
        assert name == expected
        ledger.snapshot(VM, name)
    assert set(ledger.vm(VM).snapshots) == {"20261207-080503", "20261207-080503-2"}


def test_overlay_names_follow_libvirt() -> None:
    assert snapshot_overlay_path("/images/base.qcow2", "s1") == "/images/base.s1"
    assert snapshot_overlay_path("/images/base.s1", "s2") == "/images/base.s2"
    assert revert_overlay_path("/images/base.qcow2", "s1", lambda p: False) == "/images/base.s1-1"
    _, ledger = make(snapshots=0)
    first = ledger.snapshot(VM, "s1")
    second = ledger.snapshot(VM, "s2")
    assert first.steps[0].path == "/images/base.s1"  # type: ignore[union-attr]
    assert second.steps[0].path == "/images/base.s2"  # type: ignore[union-attr]
    assert second.steps[0].backing == "/images/base.s1"  # type: ignore[union-attr]


def test_user_overlays_may_go_to_the_disks_directory_or_a_pool() -> None:
    storage = SimulatedStorage()
    storage.make_image(BASE, VSIZE)
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt(VM, {"vda": BASE}, pools=["/pool"])
    ledger.snapshot(VM, "s1", overlays={"vda": "/pool/mine.s1"})
    ledger.snapshot(VM, "s2", overlays={"vda": "/images/mine.s2"})
    assert ledger.vm(VM).disks["vda"] == "/images/mine.s2"
    assert storage.files["/images/mine.s2"].backing == "/pool/mine.s1"
    with pytest.raises(BadPath):
        ledger.revert(VM, "s1", overlays={"vda": "/elsewhere/mine.s1-1"})


def test_revert_overlay_never_reuses_a_path() -> None:
    storage, ledger = make()
    paths = []
    for _ in range(2):
        paths.append(ledger.revert(VM, "s1").steps[0].path)  # type: ignore[union-attr]
    # base.s1-1 was deleted as an abandoned present: it appeared in the ledger, so it stays used
    assert "/images/base.s1-1" not in storage.files
    storage.make_image("/images/base.s1-3", VSIZE)  # a file someone else put there
    paths.append(ledger.revert(VM, "s1").steps[0].path)  # type: ignore[union-attr]
    assert paths == ["/images/base.s1-1", "/images/base.s1-2", "/images/base.s1-4"]
    assert storage.read_all("/images/base.s1-3") == {}
    assert_views_agree(ledger)


# ---- bad input: exit 2, nothing changes --------------------------------------------------------


BAD: dict[str, tuple[type[BadInput], Callable[[Snapledger], Any]]] = {
    "snapshot unknown vm": (UnknownVm, lambda led: led.snapshot("nope", "s9")),
    "revert unknown vm": (UnknownVm, lambda led: led.revert("nope", "s1")),
    "delete unknown vm": (UnknownVm, lambda led: led.delete("nope", "s1")),
    "swap unknown vm": (UnknownVm, lambda led: led.swap_disk("nope", "vda", "/images/own.qcow2")),
    "gc unknown vm": (UnknownVm, lambda led: led.gc("nope")),
    "revert unknown snapshot": (UnknownSnapshot, lambda led: led.revert(VM, "s9")),
    "delete unknown snapshot": (UnknownSnapshot, lambda led: led.delete(VM, "s9")),
    "overlay unknown disk": (
        UnknownDisk, lambda led: led.snapshot(VM, "s9", overlays={"vdz": "/images/x.s9"})
    ),
    "exclude unknown disk": (UnknownDisk, lambda led: led.snapshot(VM, "s9", exclude=["vdz"])),
    "swap unknown disk": (UnknownDisk, lambda led: led.swap_disk(VM, "vdz", "/images/own.qcow2")),
    "duplicate snapshot": (DuplicateName, lambda led: led.snapshot(VM, "s1")),
    "duplicate vm": (DuplicateName, lambda led: led.adopt(VM, {"vda": "/images/own.qcow2"})),
    "bad snapshot name": (BadName, lambda led: led.snapshot(VM, "bad name")),
    "long snapshot name": (BadName, lambda led: led.snapshot(VM, "x" * 65)),
    "bad vm name": (BadName, lambda led: led.adopt("-vm", {"vda": "/images/own.qcow2"})),
    "existing overlay": (BadPath, lambda led: led.snapshot(VM, "s9", overlays={"vda": BASE})),
    "existing revert overlay": (
        BadPath, lambda led: led.revert(VM, "s1", overlays={"vda": "/images/own.qcow2"})
    ),
    "relative overlay": (BadPath, lambda led: led.snapshot(VM, "s9", overlays={"vda": "images/x"})),
    "outside overlay": (
        BadPath, lambda led: led.snapshot(VM, "s9", overlays={"vda": "/elsewhere/x.s9"})
    ),
    "unnormalised overlay": (
        BadPath, lambda led: led.revert(VM, "s1", overlays={"vda": "/images/../etc/x"})
    ),
    "bad strategy": (BadInput, lambda led: led.delete(VM, "s1", strategy="merge")),
    "bad branches": (BadInput, lambda led: led.delete(VM, "s1", branches="drop")),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_with_exit_2_and_changes_nothing(case: str) -> None:
    error, call = BAD[case]
    storage, ledger = make()
    storage.make_image("/images/own.qcow2", VSIZE, {5: 0x55})
    files = copy.deepcopy(storage.files)
    before = events(ledger)
    with pytest.raises(error) as caught:
        call(ledger)
    assert caught.value.exit_code == 2
    assert storage.files == files
    assert events(ledger) == before
    assert ledger.vm(VM).operation is None


# ---- swap-disk -------------------------------------------------------------------------------


def test_swap_disk_keeps_swapped_in_and_detached_images() -> None:
    storage, ledger = make()  # s1 frozen base.qcow2, s2 frozen base.s1, present base.s2
    storage.make_image("/images/own.qcow2", VSIZE, {9: 0x99})
    ledger.swap_disk(VM, "vda", "/images/own.qcow2")
    vm = ledger.vm(VM)
    assert vm.disks["vda"] == "/images/own.qcow2"
    assert vm.images["/images/base.s2"].detached
    assert vm.images["/images/own.qcow2"].origin.value == "adopted"
    s1 = contents(storage, ledger)["s1"]

    # s2's frozen image base.s1 has one child, the detached base.s2: nothing moves
    files = copy.deepcopy(storage.files)
    with pytest.raises(StrategyNotAllowed) as caught:
        ledger.delete(VM, "s2", strategy="commit")
    assert caught.value.exit_code == 3
    plan = ledger.delete(VM, "s2")
    assert plan.steps == () and "detached" in plan.strategy
    assert storage.files == files

    plan = ledger.revert(VM, "s1")
    assert not any(isinstance(s, DeleteFile) for s in plan.steps)
    assert storage.read_all("/images/own.qcow2") == {9: 0x99}
    # the abandoned own.qcow2 is the user's file: detached, like base.s2, and kept with its chain
    assert ledger.vm(VM).images["/images/own.qcow2"].detached
    assert ledger.gc() == []
    assert {"/images/base.s1", "/images/base.s2", "/images/own.qcow2"} <= set(storage.files)

    plans = ledger.gc(VM, include_detached=True)
    assert [p.steps for p in plans] == [
        (  # children first; the user's own file is only forgotten
            DeleteFile("/images/base.s2"),
            DeleteFile("/images/base.s1"),
            ReleaseImage("/images/own.qcow2"),
        )
    ]
    assert set(storage.files) == {BASE, "/images/own.qcow2", "/images/base.s1-1"}
    assert storage.read_all("/images/own.qcow2") == {9: 0x99}
    assert contents(storage, ledger) == {"s1": s1, "<present>": s1}
    assert_views_agree(ledger)


def test_swapping_in_a_frozen_image_is_refused() -> None:
    storage, ledger = make()
    files = copy.deepcopy(storage.files)
    before = events(ledger)
    with pytest.raises(Refused) as caught:
        ledger.swap_disk(VM, "vda", "/images/base.s1")  # holds s2
    assert caught.value.exit_code == 3
    assert storage.files == files and events(ledger) == before


# ---- two VMs sharing a template ---------------------------------------------------------------


TEMPLATE = "/images/template.qcow2"


def _writes_or_deletes(plan: Plan, path: str) -> bool:
    return any(
        (isinstance(s, Commit) and s.base == path)
        or (isinstance(s, Pull) and s.image == path)
        or (isinstance(s, DeleteFile) and s.path == path)
        for s in plan.steps
    )


def test_shared_template_is_never_written_or_deleted() -> None:
    storage = SimulatedStorage()
    storage.make_image(TEMPLATE, VSIZE, {c: 0x70 for c in range(4)})
    for vm in ("a", "b"):
        storage.make_image(f"/images/{vm}.qcow2", VSIZE, {4: 0x40}, backing=TEMPLATE)
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    plans: list[Plan] = []
    for vm in ("a", "b"):
        ledger.adopt(vm, {"vda": f"/images/{vm}.qcow2"})
        for n in (1, 2, 3):
            plans.append(ledger.snapshot(vm, f"s{n}"))
            write(storage, ledger, 5 + n, 0x50 + n, vm)
        plans.append(ledger.revert(vm, "s1"))
        plans.append(ledger.delete(vm, "s2"))
        plans.append(ledger.delete(vm, "s1", branches="pull"))
        plans.extend(ledger.gc(vm, include_detached=True))
    template = storage.files[TEMPLATE]
    assert template.clusters == {c: 0x70 for c in range(4)} and template.backing is None
    assert not any(_writes_or_deletes(p, TEMPLATE) for p in plans)
    assert ledger.view.users_of(TEMPLATE) == {"a", "b"}
    assert_views_agree(ledger)


def test_deletions_that_would_write_a_shared_image_are_metadata_only() -> None:
    storage = SimulatedStorage()
    storage.make_image(TEMPLATE, VSIZE, {0: 0x70})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": TEMPLATE})  # a's own disk, frozen by s1
    ledger.snapshot("a", "s1")
    write(storage, ledger, 1, 0x11, "a")
    ledger.snapshot("a", "s2")  # /images/template.s1 frozen by s2
    write(storage, ledger, 2, 0x22, "a")
    storage.make_image("/images/b.qcow2", VSIZE, {3: 0x33}, backing="/images/template.s1")
    ledger.adopt("b", {"vda": "/images/b.qcow2"})  # both images are now in b's chain: read-only
    files = copy.deepcopy(storage.files)
    for forced in ("commit", "pull"):  # s1: one child, template.s1, and neither way is allowed
        with pytest.raises(StrategyNotAllowed) as caught:
            ledger.delete("a", "s1", strategy=forced)
        assert caught.value.exit_code == 3
    for snap in ("s1", "s2"):
        plan = ledger.delete("a", snap)
        assert plan.steps == () and "metadata only" in plan.strategy
    assert storage.files == files
    assert storage.read_all("/images/b.qcow2") == {0: 0x70, 1: 0x11, 3: 0x33}
    assert storage.read_all(ledger.vm("a").disks["vda"]) == {0: 0x70, 1: 0x11, 2: 0x22}
    assert ledger.gc() == []
    assert_views_agree(ledger)


# ---- gc --------------------------------------------------------------------------------------


def test_gc_deletes_leftover_managed_images_only() -> None:
    storage, ledger = make(snapshots=1)  # s1 frozen base.qcow2, present base.s1
    ledger.snapshot(VM, "s2")  # s2 frozen base.s1
    ledger.revert(VM, "s2")  # base.s2-1 over base.s1
    ledger.snapshot(VM, "s3")  # s3 frozen base.s2-1
    ledger.revert(VM, "s2")  # base.s2-2 over base.s1: base.s1 is a branch point
    ledger.delete(VM, "s2", branches="keep")
    ledger.delete(VM, "s3")  # base.s2-1 goes
    ledger.revert(VM, "s1")  # base.s2-2 goes; base.s1 is left over, nothing needs it
    assert "/images/base.s1" in storage.files
    plans = ledger.gc()
    assert [p.steps for p in plans] == [(DeleteFile("/images/base.s1"),)]
    assert set(storage.files) == {BASE, "/images/base.s1-1"}
    assert ledger.gc() == []
    assert contents(storage, ledger) == {"s1": {0: 0x10, 1: 0x10}, "<present>": {0: 0x10, 1: 0x10}}
    assert_views_agree(ledger)


def test_a_leftover_is_deleted_before_the_file_it_rests_on() -> None:
    """A kept branch base whose branches went is a leftover until gc; a delete that frees the
    file under it deletes it first, so that no image the ledger holds dangles."""
    storage, ledger = make(snapshots=2)  # s1 frozen base.qcow2, s2 frozen base.s1, present base.s2
    ledger.snapshot(VM, "s3")  # s3 frozen base.s2
    ledger.revert(VM, "s3")  # base.s3-1 over base.s2
    ledger.snapshot(VM, "s4")  # s4 frozen base.s3-1
    ledger.revert(VM, "s3")  # base.s3-2 over base.s2: a branch point
    ledger.delete(VM, "s3", branches="keep")
    ledger.delete(VM, "s4")  # base.s3-1 goes
    ledger.revert(VM, "s2")  # base.s3-2 goes: base.s2 is a leftover over base.s1
    write(storage, ledger, 5, 0x55)
    before = contents(storage, ledger)
    plan = ledger.delete(VM, "s2", strategy="pull", dry_run=True)
    deletions = [s.path for s in plan.steps if isinstance(s, DeleteFile)]
    assert deletions == ["/images/base.s2", "/images/base.s1"]
    ledger.delete(VM, "s2", strategy="pull")
    assert "/images/base.s2" not in storage.files
    for record in ledger.vm(VM).images.values():  # every chain the ledger holds reads whole
        storage.inspect_chain(record.path, fmt=record.facts.format)
    del before["s2"]
    assert contents(storage, ledger) == before
    assert ledger.gc() == []
    assert ledger.verify(VM) == []
    assert_views_agree(ledger)


def test_gc_never_deletes_adopted_or_read_only_images() -> None:
    storage, ledger = make(snapshots=1)
    storage.make_image("/images/tmpl.qcow2", VSIZE, {7: 0x77})
    storage.make_image("/images/own.qcow2", VSIZE, {8: 0x88}, backing="/images/tmpl.qcow2")
    ledger.swap_disk(VM, "vda", "/images/own.qcow2")
    ledger.revert(VM, "s1")  # own.qcow2 and tmpl.qcow2 are no longer needed
    plans = ledger.gc(include_detached=True)
    steps = {s for p in plans for s in p.steps}
    assert ReleaseImage("/images/own.qcow2") in steps
    assert ReleaseImage("/images/tmpl.qcow2") in steps
    assert DeleteFile("/images/base.s1") in steps  # the detached managed overlay
    assert not any(isinstance(s, DeleteFile) and s.path.endswith("qcow2") for s in steps)
    assert storage.read_all("/images/own.qcow2") == {7: 0x77, 8: 0x88}
    assert BASE in storage.files
    assert_views_agree(ledger)


# ---- faults ----------------------------------------------------------------------------------


def test_failed_snapshot_is_rolled_back_and_the_vm_stays_usable() -> None:
    storage, ledger = make()
    files = set(storage.files)
    before = contents(storage, ledger)
    storage.inject(fail_at=1)
    with pytest.raises(StorageError) as caught:
        ledger.snapshot(VM, "s3")
    assert caught.value.exit_code == 1
    vm = ledger.vm(VM)
    assert vm.operation is None and "s3" not in vm.snapshots
    assert set(storage.files) == files
    assert contents(storage, ledger) == before
    assert ledger.refresh().users_of("/images/base.s3") == set()  # no claim left behind
    ledger.snapshot(VM, "s3", overlays={"vda": "/images/retry.s3"})
    ledger.snapshot(VM, "s4")
    write(storage, ledger, 20, 0x44)
    ledger.revert(VM, "s2")
    assert contents(storage, ledger)["<present>"] == before["s2"]
    assert_views_agree(ledger)


def test_failure_at_the_second_disk_removes_the_first_overlay() -> None:
    storage = SimulatedStorage()
    for disk in ("vda", "vdb"):
        storage.make_image(f"/images/{disk}.qcow2", VSIZE, {0: 0x10})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt(VM, {"vda": "/images/vda.qcow2", "vdb": "/images/vdb.qcow2"})
    storage.inject(fail_at=2)
    with pytest.raises(StorageError, match="injected failure"):
        ledger.snapshot(VM, "s1")
    assert set(storage.files) == {"/images/vda.qcow2", "/images/vdb.qcow2"}
    vm = ledger.vm(VM)
    assert vm.operation is None and vm.snapshots == {}
    assert vm.disks == {"vda": "/images/vda.qcow2", "vdb": "/images/vdb.qcow2"}
    assert all(ledger.view.users_of(f"/images/{d}.s1") == set() for d in ("vda", "vdb"))
    ledger.snapshot(VM, "s2")
    assert set(ledger.vm(VM).disks.values()) == {"/images/vda.s2", "/images/vdb.s2"}
    assert_views_agree(ledger)


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_crash_during_a_commit_is_recovered_with_every_snapshot_intact(crash_at: int) -> None:
    storage, ledger = make()
    for c in range(10, 20):
        write(storage, ledger, c, 0x66)  # a bigger layer: half a commit differs
    ledger.snapshot(VM, "s3")  # base.s2 frozen; deleting s2 commits it into base.s1
    write(storage, ledger, 30, 0x77)
    before = contents(storage, ledger)
    storage.inject(crash_at=crash_at)
    with pytest.raises(SimulatedCrash):
        ledger.delete(VM, "s2", strategy="commit")
    fresh = ledger_service(ledger.app, storage)
    assert fresh.recover() != []
    del before["s2"]
    assert contents(storage, fresh) == before
    vm = fresh.vm(VM)
    assert vm.operation is None and "s2" not in vm.snapshots
    assert "/images/base.s2" not in storage.files
    assert fresh.gc() == []
    assert_views_agree(fresh)


def test_a_disk_another_vm_let_go_of_still_keeps_the_image_it_rests_on() -> None:
    """vm2's disk (the user's file) rests on vda.s1, s2's frozen image in vm1. vm1 deletes s2 and
    reverts to s1; vm2 swaps its disk for another and lets the old one go. The
    ledger holds vda.s1 for nobody now, but the user's file in vm2's directory still rests on it:
    vm1's gc leaves it, because the scan looks in every tracked VM's directories (the deep
    state-machine profile found gc deleting it)."""
    storage = SimulatedStorage()
    storage.make_image("/vms/vm1/vda.qcow2", 16 * CLUSTER, {0: 0x11})
    ledger = ledger_service(LedgerApplication(), storage)
    ledger.adopt("vm1", {"vda": "/vms/vm1/vda.qcow2"})
    ledger.snapshot("vm1", "s1")
    storage.write(ledger.view.vms["vm1"].disks["vda"], 1, 0x22)
    ledger.snapshot("vm1", "s2")
    frozen = ledger.view.vms["vm1"].snapshots["s2"].disks["vda"]
    storage.make_image("/vms/vm2/vda.qcow2", 16 * CLUSTER, {2: 0x33}, backing=frozen)
    ledger.adopt("vm2", {"vda": "/vms/vm2/vda.qcow2"}, pools=["/vms/vm1"])
    ledger.delete("vm1", "s2")  # metadata only: vm2 uses the image
    ledger.revert("vm1", "s1")  # vm1 itself no longer needs vda.s1
    storage.make_image("/vms/vm2/other.qcow2", 16 * CLUSTER, {})
    ledger.swap_disk("vm2", "vda", "/vms/vm2/other.qcow2")
    ledger.gc("vm2", True)  # vm2 lets go of its old disk (the user's file: released, kept)
    ledger.gc("vm1", True)
    assert storage.exists(frozen)
    assert storage.read_all("/vms/vm2/vda.qcow2") == {0: 0x11, 1: 0x22, 2: 0x33}
