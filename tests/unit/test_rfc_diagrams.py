"""The RFC's two diagrams, step by step
(docs/semantics.md, "Where it comes from: the libvirt RFC").

Every test checks the plan (actions and paths) and the bytes: each snapshot read through its frozen
image, the present through the active image, against a model kept here independently of the ledger.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.domain.errors import BranchPointRefused
from snapledger.domain.steps import Plan
from snapledger.projections.cost import CostModel
from snapledger.projections.view import LedgerView
from snapledger.testing.checks import changes

VM = "vm"
DIR = "/images"
BASE = f"{DIR}/base.qcow2"
VSIZE = 256 * CLUSTER


def img(name: str) -> str:
    return f"{DIR}/{name}"


def shape(plan: Plan) -> list[tuple[Any, ...]]:
    """(action, the paths it names) per step."""
    out: list[tuple[Any, ...]] = []
    for s in plan.steps:
        skip = ("bytes", "scanned_bytes", "virtual_size")
        out.append((s.action, *(v for k, v in vars(s).items() if k not in skip)))
    return out


@dataclass
class Rig:
    storage: SimulatedStorage
    ledger: Snapledger
    present: dict[int, int] = field(default_factory=dict)
    expected: dict[str, dict[int, int]] = field(default_factory=dict)

    @classmethod
    def adopt(cls) -> Rig:
        storage = SimulatedStorage()
        content = {c: 0x10 for c in range(8)}
        storage.make_image(BASE, VSIZE, content)
        ledger = ledger_service(LedgerApplication("memory:"), storage)
        ledger.adopt(VM, {"vda": BASE})
        return cls(storage, ledger, dict(content))

    def write(self, start: int, count: int, pattern: int) -> None:
        active = self.ledger.vm(VM).disks["vda"]
        for c in range(start, start + count):
            self.storage.write(active, c, pattern)
            self.present[c] = pattern

    def snapshot(self, name: str) -> Plan:
        plan = self.ledger.snapshot(VM, name)
        self.expected[name] = dict(self.present)
        return plan

    def revert(self, name: str) -> Plan:
        plan = self.ledger.revert(VM, name)
        self.present = dict(self.expected[name])
        return plan

    def delete(self, name: str, strategy: str = "auto", branches: str = "forbid") -> Plan:
        plan = self.ledger.delete(VM, name, strategy, branches)
        del self.expected[name]
        return plan

    def files(self) -> set[str]:
        return set(self.storage.files)

    def events(self) -> int:
        return changes(self.ledger.app)

    def check_bytes(self) -> None:
        vm = self.ledger.vm(VM)
        assert set(vm.snapshots) == set(self.expected)
        for name, content in self.expected.items():
            assert self.storage.read_all(vm.snapshots[name].disks["vda"]) == content, name
        assert self.storage.read_all(vm.disks["vda"]) == self.present
        rebuilt = LedgerView()
        rebuilt.apply_all(self.ledger.app.events_after(0))
        assert rebuilt.canonical() == self.ledger.refresh().canonical()


def diagram2(n1: int = 4, n2: int = 4) -> Rig:
    """base.qcow2 <- base.snap1 <- base.snap2 (<- base.snap3, abandoned), and the alternate
    history base.snap1-1 over base.qcow2. n1/n2: clusters written into base.snap1/base.snap2."""
    rig = Rig.adopt()
    rig.snapshot("snap1")
    rig.write(4, n1, 0x21)
    rig.snapshot("snap2")
    rig.write(6, n2, 0x22)  # overlaps what snap1's layer wrote
    rig.snapshot("snap3")
    rig.write(5, 3, 0x23)
    plan = rig.revert("snap1")
    assert shape(plan) == [
        ("create-overlay", img("base.snap1-1"), BASE, "qcow2"),
        ("set-active", "vda", img("base.snap1-1")),
        ("delete-file", img("base.snap3")),
    ]
    rig.write(2, 3, 0x5A)  # the alternate history
    assert rig.files() == {BASE, img("base.snap1"), img("base.snap2"), img("base.snap1-1")}
    rig.check_bytes()
    return rig


# ---- diagram 2 ---------------------------------------------------------------------------


def test_diagram2_delete_snap3_drops_its_image() -> None:
    rig = diagram2()
    plan = rig.delete("snap3")
    assert shape(plan) == [("delete-file", img("base.snap2"))]
    assert rig.files() == {BASE, img("base.snap1"), img("base.snap1-1")}
    rig.check_bytes()


def _costs(rig: Rig) -> dict[str, float]:
    model = CostModel()
    return {
        way: model.total(rig.ledger.delete(VM, "snap2", strategy=way, dry_run=True).steps)
        for way in ("commit", "pull")
    }


COMMIT_SHAPE = [
    ("commit", img("base.snap2"), img("base.snap1")),
    ("move-frozen", "snap3", "vda", img("base.snap1")),
    ("delete-file", img("base.snap2")),
]
PULL_SHAPE = [
    ("pull", img("base.snap2"), BASE, "qcow2"),
    ("delete-file", img("base.snap1")),
]


@pytest.mark.parametrize(
    ("n1", "n2", "way", "expected_shape"),
    [
        (40, 2, "commit", COMMIT_SHAPE),  # big parent, small child: commit moves less
        (2, 40, "pull", PULL_SHAPE),  # small parent, big child: pull moves less
    ],
)
def test_diagram2_delete_snap2_merges_the_cheaper_way(
    n1: int, n2: int, way: str, expected_shape: list[tuple[Any, ...]]
) -> None:
    rig = diagram2(n1, n2)
    costs = _costs(rig)
    assert min(costs, key=costs.__getitem__) == way
    before = rig.events()
    plan = rig.delete("snap2")
    assert rig.events() > before
    assert shape(plan) == expected_shape
    assert plan.bytes_moved == (n2 if way == "commit" else n1) * CLUSTER
    assert plan.strategy.startswith(f"vda: {way}")
    gone = img("base.snap2") if way == "commit" else img("base.snap1")
    assert rig.files() == {BASE, img("base.snap1"), img("base.snap2"), img("base.snap1-1")} - {gone}
    rig.check_bytes()
    assert rig.ledger.vm(VM).snapshots["snap3"].parent == "snap1"


@pytest.mark.parametrize(
    ("n1", "n2", "forced", "expected_shape"),
    [(2, 40, "commit", COMMIT_SHAPE), (40, 2, "pull", PULL_SHAPE)],  # each against the cost model
)
def test_diagram2_delete_snap2_strategy_can_be_forced(
    n1: int, n2: int, forced: str, expected_shape: list[tuple[Any, ...]]
) -> None:
    rig = diagram2(n1, n2)
    costs = _costs(rig)
    assert min(costs, key=costs.__getitem__) != forced
    plan = rig.delete("snap2", strategy=forced)
    assert shape(plan) == expected_shape
    assert "forced" in plan.strategy
    rig.check_bytes()


def test_diagram2_delete_snap1_keeps_the_adopted_base_as_shared_backing() -> None:
    rig = diagram2()
    files = copy.deepcopy(rig.storage.files)
    plan = rig.delete("snap1")
    assert plan.steps == ()
    assert "metadata only" in plan.strategy
    assert rig.storage.files == files  # nothing moved, base.qcow2 untouched
    vm = rig.ledger.vm(VM)
    assert vm.snapshots["snap2"].parent is None
    assert vm.current is None  # snap1 was current
    assert BASE in vm.images
    rig.check_bytes()


# ---- the same shape one level up: the branch point is a managed overlay --------------------


def level_up() -> Rig:
    rig = Rig.adopt()
    for i, name in enumerate(["snap0", "snap1", "snap2", "snap3"]):
        rig.snapshot(name)
        rig.write(3 + 2 * i, 3, 0x30 + i)
    plan = rig.revert("snap1")
    assert shape(plan) == [
        ("create-overlay", img("base.snap1-1"), img("base.snap0"), "qcow2"),
        ("set-active", "vda", img("base.snap1-1")),
        ("delete-file", img("base.snap3")),
    ]
    rig.write(1, 4, 0x5A)
    rig.check_bytes()
    return rig


def test_level_up_branch_point_is_refused_by_default_and_changes_nothing() -> None:
    rig = level_up()
    files = copy.deepcopy(rig.storage.files)
    events = rig.events()
    with pytest.raises(BranchPointRefused) as caught:
        rig.ledger.delete(VM, "snap1")
    assert caught.value.exit_code == 3
    message = str(caught.value)
    for part in (img("base.snap0"), img("base.snap1"), img("base.snap1-1"), "--branches pull",
                 "--branches keep"):
        assert part in message
    assert rig.storage.files == files
    assert rig.events() == events
    assert rig.ledger.vm(VM).operation is None
    rig.check_bytes()


def test_level_up_branches_pull_copies_the_branch_point_into_both_branches() -> None:
    rig = level_up()
    plan = rig.delete("snap1", branches="pull")
    assert shape(plan) == [
        ("pull", img("base.snap1"), BASE, "qcow2"),
        ("pull", img("base.snap1-1"), BASE, "qcow2"),
        ("delete-file", img("base.snap0")),
    ]
    assert img("base.snap0") not in rig.files()
    rig.check_bytes()
    assert rig.ledger.vm(VM).snapshots["snap2"].parent == "snap0"


def test_level_up_branches_keep_is_metadata_only() -> None:
    rig = level_up()
    files = copy.deepcopy(rig.storage.files)
    plan = rig.delete("snap1", branches="keep")
    assert plan.steps == ()
    assert rig.storage.files == files
    assert "snap1" not in rig.ledger.vm(VM).snapshots
    rig.check_bytes()


# ---- diagram 1 -----------------------------------------------------------------------------


def test_diagram1_revert_names_overlays_the_rfc_way_and_drops_the_abandoned_present() -> None:
    rig = Rig.adopt()
    rig.snapshot("snap1")
    rig.write(4, 3, 0x21)
    rig.snapshot("snap2")
    rig.write(5, 3, 0x22)
    first = rig.revert("snap1")
    assert shape(first) == [
        ("create-overlay", img("base.snap1-1"), BASE, "qcow2"),
        ("set-active", "vda", img("base.snap1-1")),
        ("delete-file", img("base.snap2")),
    ]
    rig.write(7, 2, 0x5A)
    rig.check_bytes()
    second = rig.revert("snap1")
    assert shape(second) == [
        ("create-overlay", img("base.snap1-2"), BASE, "qcow2"),
        ("set-active", "vda", img("base.snap1-2")),
        ("delete-file", img("base.snap1-1")),
    ]
    assert rig.files() == {BASE, img("base.snap1"), img("base.snap1-2")}
    rig.check_bytes()


def test_diagram1_abandoned_present_that_is_not_managed_is_kept() -> None:
    rig = Rig.adopt()
    rig.snapshot("snap1")
    rig.write(4, 3, 0x21)
    rig.snapshot("snap2")
    own = img("own.qcow2")
    rig.storage.make_image(own, VSIZE, {9: 0x77})
    rig.ledger.swap_disk(VM, "vda", own)
    rig.present = {9: 0x77}
    plan = rig.revert("snap1")
    assert shape(plan) == [
        ("create-overlay", img("base.snap1-1"), BASE, "qcow2"),
        ("set-active", "vda", img("base.snap1-1")),
        ("detach-image", own),  # the user's own file is kept, detached, with its chain
    ]
    assert any(own in note for note in plan.notes)
    assert rig.ledger.vm(VM).images[own].detached
    assert rig.storage.read_all(own) == {9: 0x77}
    # the swapped-out overlay base.snap2 is detached, not abandoned: kept too
    assert {own, img("base.snap2")} <= rig.files()
    rig.check_bytes()
