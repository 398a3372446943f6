"""`explain`: why an image is kept and what would free it, on the RFC's histories.

Every route explain offers is also run, on a replica of the same history, through the real
service: each one must delete the file it claims to free.
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import BadInput, SnapledgerError, UnknownImage, UnknownVm
from snapledger.domain.images import OwnerClass
from snapledger.projections.explain import Explanation, explain_image

VM = "vm"
BASE = "/images/base.qcow2"
VSIZE = 64 * CLUSTER


def img(name: str) -> str:
    return f"/images/{name}"


@dataclass
class Rig:
    storage: SimulatedStorage
    ledger: Snapledger

    def explain(self, path: str, vm: str = VM) -> Explanation:
        return explain_image(self.ledger.refresh(), vm, path, self.ledger.cost)

    def write(self, clusters: range, pattern: int) -> None:
        active = self.ledger.vm(VM).disks["vda"]
        for c in clusters:
            self.storage.write(active, c, pattern)

    def run(self, command: str) -> None:
        """Carry out one command line explain printed, through the service."""
        words = shlex.split(command)
        assert words[0] == "snapledger"
        verb, vm, args = words[1], words[2], words[3:]
        if verb == "gc":
            self.ledger.gc(vm, "--include-detached" in args)
            return
        name, options = args[0], dict(zip(args[1::2], args[2::2], strict=True))
        if verb == "revert":
            assert not options
            self.ledger.revert(vm, name)
        else:
            assert verb == "delete" and set(options) <= {"--strategy", "--branches"}
            self.ledger.delete(
                vm, name, options.get("--strategy", "auto"), options.get("--branches", "forbid")
            )


def adopted() -> Rig:
    storage = SimulatedStorage()
    storage.make_image(BASE, VSIZE, {c: 0x10 for c in range(4)})
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt(VM, {"vda": BASE})
    return Rig(storage, ledger)


def diagram2() -> Rig:
    """base.qcow2 <- base.snap1 <- base.snap2, and the alternate history base.snap1-1; base.snap1
    holds more than base.snap2, so deleting snap2 commits by default."""
    rig = adopted()
    rig.ledger.snapshot(VM, "snap1")
    rig.write(range(4, 24), 0x21)
    rig.ledger.snapshot(VM, "snap2")
    rig.write(range(6, 8), 0x22)
    rig.ledger.snapshot(VM, "snap3")
    rig.ledger.revert(VM, "snap1")
    return rig


def level_up() -> Rig:
    """Diagram 2 one level up: the branch point base.snap0 is a managed overlay."""
    rig = adopted()
    for i, name in enumerate(["snap0", "snap1", "snap2", "snap3"]):
        rig.ledger.snapshot(VM, name)
        rig.write(range(3 + 2 * i, 6 + 2 * i), 0x30 + i)
    rig.ledger.revert(VM, "snap1")
    return rig


def swapped_then_reverted() -> Rig:
    """The user swaps in their own file, then reverts: their file and the swapped-out overlay
    are detached."""
    rig = adopted()
    rig.ledger.snapshot(VM, "snap1")
    rig.write(range(4, 7), 0x21)
    rig.ledger.snapshot(VM, "snap2")
    rig.storage.make_image(img("own.qcow2"), VSIZE, {9: 0x77})
    rig.ledger.swap_disk(VM, "vda", img("own.qcow2"))
    rig.ledger.revert(VM, "snap1")
    return rig


def commands(explanation: Explanation) -> list[tuple[str, ...]]:
    return [route.commands for route in explanation.freed_by]


# ---- what it is and what keeps it ------------------------------------------------------------


def test_the_users_base_is_a_branch_point_that_nothing_frees() -> None:
    rig = diagram2()
    base = rig.explain(BASE)
    assert base.owner is OwnerClass.ADOPTED and base.origin.value == "adopted"
    assert base.state == ("frozen", "branch-point")
    assert base.frozen_by == ((VM, "snap1", "vda"),)
    assert base.branches == (img("base.snap1"), img("base.snap1-1"))
    resting = {(h.kind, h.detail, h.image) for h in base.resting_on_it}
    assert resting == {
        ("frozen", "snap2", img("base.snap1")),
        ("frozen", "snap3", img("base.snap2")),
        ("active", "vda", img("base.snap1-1")),
    }
    assert not base.may_write and not base.may_delete
    assert base.freed_by == ()
    assert base.nothing_frees_it is not None and "user's own file" in base.nothing_frees_it
    data = base.to_json()
    assert data["owner"] == "adopted" and data["freed_by"] == [] and data["vms"] == [VM]
    assert {"kind", "vm", "detail", "image", "owner", "text"} <= set(data["resting_on_it"][0])


def test_a_frozen_overlay_names_the_deletions_that_free_it() -> None:
    rig = diagram2()
    snap1 = rig.explain(img("base.snap1"))
    assert snap1.owner is OwnerClass.MANAGED and snap1.state == ("frozen",)
    assert snap1.frozen_by == ((VM, "snap2", "vda"),)
    assert [n.kind for n in snap1.needs] == ["frozen", "below"]
    # deleting snap2 alone commits base.snap2 into it (cheaper), so only a forced pull frees it,
    # or deleting snap3 first (no data moves)
    assert commands(snap1) == [
        ("snapledger delete vm snap2 --strategy pull",),
        ("snapledger delete vm snap3", "snapledger delete vm snap2"),
    ]
    assert snap1.freed_by[0].bytes_moved == 20 * CLUSTER
    assert "pulled into /images/base.snap2" in snap1.freed_by[0].effect
    assert any("commit /images/base.snap2 into it" in r for r in snap1.write_reasons)
    assert snap1.nothing_frees_it is None


def test_the_present_is_freed_by_a_revert_and_the_top_by_either_delete() -> None:
    rig = diagram2()
    present = rig.explain(img("base.snap1-1"))
    assert present.state == ("active",)
    assert commands(present) == [("snapledger revert vm snap1",)]
    assert "abandoned present" in present.freed_by[0].effect
    top = rig.explain(img("base.snap2"))
    assert commands(top) == [("snapledger delete vm snap2",), ("snapledger delete vm snap3",)]
    assert "committed into /images/base.snap1" in top.freed_by[0].effect


def test_a_managed_branch_point_is_freed_by_branches_pull() -> None:
    rig = level_up()
    snap0 = rig.explain(img("base.snap0"))
    assert snap0.state == ("frozen", "branch-point")
    assert ("snapledger delete vm snap1 --branches pull",) in commands(snap0)
    route = next(r for r in snap0.freed_by if "--branches pull" in r.commands[0])
    assert "base.snap1, /images/base.snap1-1" in route.effect


def test_read_only_templates_shared_by_two_vms_are_never_freed() -> None:
    storage = SimulatedStorage()
    template = img("template.qcow2")
    storage.make_image(template, VSIZE, {0: 0x10})
    for name in ("a", "b"):
        storage.make_image(img(f"{name}.qcow2"), VSIZE, backing=template)
    ledger = ledger_service(LedgerApplication("memory:"), storage)
    ledger.adopt("a", {"vda": img("a.qcow2")})
    ledger.adopt("b", {"vda": img("b.qcow2")})
    rig = Rig(storage, ledger)
    shared = rig.explain(template, "a")
    assert shared.owner is OwnerClass.READ_ONLY and shared.origin.value == "found"
    assert shared.read_only_because == (
        "template: found below an adopted disk",
        "shared: in the chain of VMs a, b",
    )
    assert shared.vms == ("a", "b") and shared.state == ("backing", "branch-point")
    assert {(h.vm, h.image) for h in shared.resting_on_it} == {("a", img("a.qcow2")), ("b", img("b.qcow2"))}
    assert shared.write_reasons == ("read-only: snapledger never writes it",)
    assert shared.freed_by == () and "read-only" in (shared.nothing_frees_it or "")


def test_detached_images_and_the_images_below_them() -> None:
    rig = swapped_then_reverted()
    own = rig.explain(img("own.qcow2"))
    assert own.owner is OwnerClass.ADOPTED and "detached" in own.state
    assert own.freed_by == ()
    swapped_out = rig.explain(img("base.snap2"))
    assert swapped_out.state == ("detached",)
    assert commands(swapped_out) == [("snapledger gc vm --include-detached",)]
    below = rig.explain(img("base.snap1"))  # snap2's image, under the detached overlay
    assert [h.image for h in below.resting_on_it if h.kind == "detached"] == [img("base.snap2")]
    assert commands(below) == [("snapledger gc vm --include-detached", "snapledger delete vm snap2")]
    assert "once gc discarded the detached images" in below.freed_by[0].effect


def test_an_unfinished_operation_must_be_recovered_first() -> None:
    rig = diagram2()
    rig.storage.inject(crash_at=1)
    with pytest.raises(SimulatedCrash):
        rig.ledger.delete(VM, "snap3")
    top = rig.explain(img("base.snap1"))
    assert top.freed_by == () and "snapledger recover vm" in (top.nothing_frees_it or "")


def test_unknown_vm_or_image_is_bad_input() -> None:
    rig = diagram2()
    with pytest.raises(UnknownVm):
        rig.explain(BASE, "nope")
    with pytest.raises(UnknownImage) as unknown:
        rig.explain("/elsewhere/base.snap1")
    assert unknown.value.exit_code == 2 and isinstance(unknown.value, BadInput)
    assert "did you mean /images/base.snap1?" in str(unknown.value)
    rig.ledger.delete(VM, "snap3")
    with pytest.raises(UnknownImage, match="no longer holds"):
        rig.explain(img("base.snap2"))


# ---- every route it offers really frees the image --------------------------------------------


@pytest.mark.parametrize("history", [diagram2, level_up, swapped_then_reverted])
def test_every_route_offered_deletes_the_file(history: Callable[[], Rig]) -> None:
    rig = history()
    offered = 0
    for path in sorted(rig.ledger.vm(VM).images):
        explanation = rig.explain(path)
        assert (explanation.freed_by == ()) == (explanation.nothing_frees_it is not None)
        for route in explanation.freed_by:
            replica = history()
            for command in route.commands:
                replica.run(command)
            assert path not in replica.storage.files, (path, route)
            assert path not in replica.ledger.vm(VM).images
            offered += 1
    assert offered >= 2


def random_history(seed: int) -> Callable[[], Rig]:
    """A history of snapshots, guest writes, reverts, deletions and a swap, drawn from `seed`;
    the same seed always builds the same history."""

    def build() -> Rig:
        chooser = random.Random(seed)
        rig = adopted()
        for i in range(14):
            snapshots = sorted(rig.ledger.vm(VM).snapshots)
            move = chooser.choice(["snapshot", "snapshot", "write", "revert", "delete", "swap"])
            try:
                if move == "snapshot" or not snapshots:
                    rig.ledger.snapshot(VM, f"s{i}")
                elif move == "write":
                    start = chooser.randrange(40)
                    rig.write(range(start, start + chooser.randrange(1, 8)), 0x40 + i)
                elif move == "revert":
                    rig.ledger.revert(VM, chooser.choice(snapshots))
                elif move == "delete":
                    branches = chooser.choice(["keep", "pull"])
                    rig.ledger.delete(VM, chooser.choice(snapshots), "auto", branches)
                else:
                    own = img(f"own{i}.qcow2")
                    rig.storage.make_image(own, VSIZE, {1: 0x70 + i})
                    rig.ledger.swap_disk(VM, "vda", own)
            except SnapledgerError:
                pass  # a refusal is part of the history too
        return rig

    return build


@pytest.mark.parametrize("seed", range(8))
def test_every_route_offered_in_random_histories_deletes_the_file(seed: int) -> None:
    history = random_history(seed)
    rig = history()
    for path in sorted(rig.ledger.vm(VM).images):
        explanation = rig.explain(path)
        assert (explanation.freed_by == ()) == (explanation.nothing_frees_it is not None)
        if explanation.owner is not OwnerClass.MANAGED:
            assert explanation.freed_by == ()
        for route in explanation.freed_by:
            replica = history()
            for command in route.commands:
                replica.run(command)
            assert path not in replica.storage.files, (seed, path, route)
