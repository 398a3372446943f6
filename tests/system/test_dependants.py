"""A user's own overlay on one of our images is never broken or silently changed.

The user makes qcow2 files next to the VM's images that the ledger knows nothing of (`qemu-img
create -b base.s1 hand.qcow2`). Before an image is deleted or its content changed, snapledger
reads the qcow2 headers in the VM's directories; an image such a file rests on stays: revert
keeps it (detached), delete leaves that disk as it is on disk, gc leaves it, and dry runs and
`explain` name the file. What the user's files read is checked with qemu-io.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_helpers import Cli
from qemu_helpers import CLUSTER, assert_reads, make_image, qemu_io, raw_bytes

CLUSTERS = 16
SIZE = CLUSTERS * CLUSTER


class History:
    """vm over vda.qcow2 (0x10 at cluster 0), snapshots s1 (vda.qcow2) and s2 (vda.s1), with a
    guest write after each; the present is vda.s2."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cli = Cli(root)
        self.disk = make_image(root / "vda.qcow2", SIZE, {0: 0x10})
        self.cli.run("adopt", "vm", "--disk", f"vda={self.disk}")
        for n in (1, 2):
            self.cli.run("snapshot", "vm", f"s{n}")
            qemu_io(self.active(), [f"write -P {0x20 + n:#x} {n * CLUSTER} {CLUSTER}"])
        self.s1 = str(root / "vda.s1")  # s2's frozen image

    def active(self) -> str:
        active: str = self.cli.json("show", "vm")["disks"]["vda"]["active"]
        return active

    def hand(self, name: str, backing: str, clusters: dict[int, int]) -> tuple[str, bytes]:
        """A user's overlay, and every byte it reads now."""
        path = make_image(self.root / name, SIZE, clusters, backing=backing)
        return path, raw_bytes(path)


@pytest.fixture
def h(tmp_path: Path) -> History:
    return History(tmp_path)


def test_delete_leaves_an_image_a_users_overlay_rests_on(h: History) -> None:
    """hand.qcow2 rests on vda.s1, s2's frozen image: deleting s2 (which would commit into it, or
    pull it into vda.s2 and delete it) changes nothing on disk for vda; the dry run says why."""
    hand, reads = h.hand("hand.qcow2", h.s1, {5: 0x55})
    frozen = raw_bytes(h.s1)
    plan = h.cli.json("delete", "vm", "s2", "--dry-run")
    assert plan["steps"] == [] and hand in plan["strategy"]
    for strategy in ("commit", "pull"):
        refused = h.cli.run("delete", "vm", "s2", "--strategy", strategy, expect=3)
        assert hand in refused.stderr
    h.cli.run("delete", "vm", "s2")
    assert [s["name"] for s in h.cli.json("show", "vm")["snapshots"]] == ["s1"]
    assert raw_bytes(hand) == reads and raw_bytes(h.s1) == frozen
    explained = h.cli.json("explain", "vm", h.s1)
    assert hand in str(explained["nothing_frees_it"])
    assert any(hand in str(n) for n in explained["needs"])
    h.cli.run("gc")
    assert os.path.exists(h.s1) and raw_bytes(hand) == reads
    h.cli.run("verify")


def test_revert_keeps_an_abandoned_present_a_chain_of_users_overlays_rests_on(h: History) -> None:
    """hand2 -> hand1 -> vda.s2 (the present, which a revert would delete): the revert keeps it
    detached and names both files; gc, even --include-detached, leaves it while they are there."""
    present = h.active()
    hand1, reads1 = h.hand("hand1.qcow2", present, {6: 0x66})
    hand2, reads2 = h.hand("hand2.qcow2", hand1, {7: 0x77})
    dry = h.cli.json("revert", "vm", "s1", "--dry-run")
    assert not any(s["action"] == "delete-file" for s in dry["steps"])
    done = h.cli.json("revert", "vm", "s1")
    notes = " ".join(done["notes"])
    assert present in notes and hand1 in notes and hand2 in notes
    for gc in (["gc"], ["gc", "--include-detached"]):
        h.cli.run(*gc)
        assert os.path.exists(present)
        assert raw_bytes(hand1) == reads1 and raw_bytes(hand2) == reads2
    os.unlink(hand2)
    os.unlink(hand1)
    h.cli.run("gc", "--include-detached")  # once they are gone, it goes
    assert not os.path.exists(present)
    h.cli.run("verify")


def test_a_users_overlay_on_the_merge_partner_is_protected_too(h: History) -> None:
    """hand.qcow2 rests on the present vda.s2, which deleting s2 would delete (commit) or rewrite
    (pull): that disk is left as it is on disk."""
    present = h.active()
    hand, reads = h.hand("hand.qcow2", present, {9: 0x99})
    before = {p: raw_bytes(p) for p in (present, h.s1)}
    h.cli.run("delete", "vm", "s2")
    assert {p: raw_bytes(p) for p in (present, h.s1)} == before
    assert raw_bytes(hand) == reads
    assert_reads(hand, {0: 0x10, 1: 0x21, 2: 0x22, 9: 0x99}, CLUSTERS)


def test_a_dependant_named_through_a_symlinked_directory(h: History) -> None:
    """The user's overlay names its backing through a symlink to the VM's directory, and lives
    in a subdirectory: it is found all the same."""
    link = h.root / "images-link"
    os.symlink(h.root, link)
    (h.root / "mine").mkdir()
    hand, reads = h.hand("mine/hand.qcow2", str(link / "vda.s1"), {4: 0x44})
    plan = h.cli.json("delete", "vm", "s2", "--dry-run")
    assert plan["steps"] == [] and hand in plan["strategy"]
    h.cli.run("delete", "vm", "s2")
    assert raw_bytes(hand) == reads


def test_without_dependants_the_same_delete_merges(h: History) -> None:
    """The control: a file in the directory that rests on nothing of ours does not stop it."""
    make_image(h.root / "unrelated.qcow2", SIZE, {1: 0x01})
    plan = h.cli.json("delete", "vm", "s2", "--dry-run")
    assert plan["steps"], plan
    h.cli.run("delete", "vm", "s2")
    assert not os.path.exists(h.s1) or not os.path.exists(h.root / "vda.s2")


def test_an_overlay_whose_backing_is_away_may_rest_on_any_image(h: History) -> None:
    """hand2 -> hand1 -> vda.s1, and the user has moved hand1 away for a while: what hand2 rests
    on can't be told, so it may rest on vda.s1. Deleting s2 leaves vda as it is on disk and names
    hand2 and the missing file; once hand1 is back, both read exactly as before (a fault
    campaign found this losing the user's data, seed 334)."""
    hand1, reads1 = h.hand("hand1.qcow2", h.s1, {6: 0x66})
    hand2, reads2 = h.hand("hand2.qcow2", hand1, {7: 0x77})
    (h.root / "away").mkdir()
    away = str(h.root / "away" / "hand1.qcow2")
    os.rename(hand1, away)
    before = {p: raw_bytes(p) for p in (h.s1, h.active())}
    plan = h.cli.json("delete", "vm", "s2", "--dry-run")
    assert plan["steps"] == [] and hand2 in plan["strategy"] and hand1 in plan["strategy"]
    h.cli.run("delete", "vm", "s2")
    assert {p: raw_bytes(p) for p in before} == before
    os.rename(away, hand1)
    assert raw_bytes(hand1) == reads1 and raw_bytes(hand2) == reads2
    assert_reads(hand2, {0: 0x10, 1: 0x21, 6: 0x66, 7: 0x77}, CLUSTERS)
    h.cli.run("verify")


def test_a_disk_another_vm_let_go_of_keeps_the_image_it_rests_on(tmp_path: Path) -> None:
    """vm2's disk, the user's file in vm2's own directory, rests on vm1's vda.s1 (s2's frozen
    image). vm1 deletes s2 and reverts to s1; vm2 swaps its disk and lets the old one go. vm1's
    gc then finds that file in vm2's directory and leaves vda.s1 (it deleted it before: found
    by the deep state-machine profile)."""
    one, two = tmp_path / "vm1", tmp_path / "vm2"
    one.mkdir()
    two.mkdir()
    cli = Cli(tmp_path)
    disk = make_image(one / "vda.qcow2", SIZE, {0: 0x10})
    cli.run("adopt", "vm1", "--disk", f"vda={disk}")
    cli.run("snapshot", "vm1", "s1")
    qemu_io(str(one / "vda.s1"), [f"write -P 0x21 {CLUSTER} {CLUSTER}"])
    cli.run("snapshot", "vm1", "s2")
    theirs = make_image(two / "vda.qcow2", SIZE, {2: 0x33}, backing=str(one / "vda.s1"))
    cli.run("adopt", "vm2", "--disk", f"vda={theirs}", "--pool", str(one))
    cli.run("delete", "vm1", "s2")
    cli.run("revert", "vm1", "s1")
    other = make_image(two / "other.qcow2", SIZE, {})
    cli.run("swap-disk", "vm2", "vda", other)
    cli.run("gc", "vm2", "--include-detached")
    cli.run("gc", "vm1", "--include-detached")
    assert os.path.exists(one / "vda.s1")
    assert_reads(theirs, {0: 0x10, 1: 0x21, 2: 0x33}, CLUSTERS)
