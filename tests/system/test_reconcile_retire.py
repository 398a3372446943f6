"""Drift is not a dead end (`reconcile`), and tracking can end (`retire`).

On real images through the command line; every snapshot is read back with qemu-io.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import Cli
from qemu_helpers import CLUSTER, assert_reads, make_image, qemu_io

CLUSTERS = 16
SIZE = CLUSTERS * CLUSTER


class History:
    """vm over vda.qcow2; snapshots s1, s2, s3 with a guest write after each (known bytes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cli = Cli(root)
        self.disk = make_image(root / "vda.qcow2", SIZE, {0: 0x10})
        self.cli.run("adopt", "vm", "--disk", f"vda={self.disk}")
        self.reads: dict[str, dict[int, int]] = {}
        present = {0: 0x10}
        for n in (1, 2, 3):
            self.cli.run("snapshot", "vm", f"s{n}")
            self.reads[f"s{n}"] = dict(present)
            qemu_io(self.active(), [f"write -P {0x20 + n:#x} {n * CLUSTER} {CLUSTER}"])
            present[n] = 0x20 + n
        self.present = present

    def active(self) -> str:
        active: str = self.cli.json("show", "vm")["disks"]["vda"]["active"]
        return active

    def frozen(self, snapshot: str) -> str:
        state = self.cli.json("show", "vm")
        return str(next(s for s in state["snapshots"] if s["name"] == snapshot)["disks"]["vda"])

    def check_bytes(self, skip: tuple[str, ...] = ()) -> None:
        state = self.cli.json("show", "vm")
        for snap in state["snapshots"]:
            if snap["name"] not in skip:
                assert_reads(snap["disks"]["vda"], self.reads[snap["name"]], CLUSTERS)
        assert_reads(state["disks"]["vda"]["active"], self.present, CLUSTERS)


@pytest.fixture
def h(tmp_path: Path) -> History:
    return History(tmp_path)


def replace_by_a_copy(path: str) -> None:
    shutil.copy(path, path + ".copy")
    os.replace(path + ".copy", path)


def test_an_active_image_replaced_by_a_copy_is_reconciled(h: History) -> None:
    """Every command is refused (exit 3) and says how out; reconcile --dry-run shows it and
    records nothing; reconcile records the new file (the user's from now on); then snapshot,
    delete and revert work again and every snapshot reads as before."""
    active = h.active()
    replace_by_a_copy(active)
    for command in (["snapshot", "vm", "s4"], ["delete", "vm", "s1"], ["revert", "vm", "s1"],
                    ["swap-disk", "vm", "vda", active]):
        refused = h.cli.run(*command, expect=3 if command[0] != "swap-disk" else 2)
        if command[0] != "swap-disk":
            assert "snapledger reconcile vm" in refused.stderr
    before = h.cli.state()
    dry = h.cli.json("reconcile", "vm", "--dry-run")
    assert dry["observed"] == [active] and dry["disowned"] == [active] and dry["dry_run"]
    assert h.cli.state() == before
    done = h.cli.json("reconcile", "vm")
    assert done["position"] > before[0]
    assert h.cli.json("reconcile", "vm")["changes"] == []  # nothing left to record
    h.cli.run("verify")
    h.check_bytes()
    h.cli.run("snapshot", "vm", "s4")
    h.reads["s4"] = dict(h.present)
    h.cli.run("delete", "vm", "s2")
    h.check_bytes()
    h.cli.run("revert", "vm", "s1")
    assert os.path.exists(active)  # the user's file now: detached, never deleted
    h.present = dict(h.reads["s1"])
    h.check_bytes()
    h.cli.run("verify")


def test_a_frozen_image_gone_leaves_a_broken_snapshot_until_it_is_deleted(h: History) -> None:
    frozen = h.frozen("s3")  # vda.s2
    away = h.root.parent / f"{h.root.name}-away.qcow2"  # out of the VM's directories
    shutil.move(frozen, away)
    h.cli.run("delete", "vm", "s1", expect=3)  # every operation refused: the chain is broken
    found = h.cli.json("reconcile", "vm")
    assert found["gone"] == [frozen]
    state = h.cli.json("show", "vm")
    assert state["missing"] == [frozen]
    reconciled = [e for e in h.cli.json("log", "vm") if e["type"].endswith(".Reconciled")]
    assert len(reconciled) == 1 and "1 gone" in reconciled[0]["summary"]
    before = h.cli.json("show", "vm", "--at-event", str(reconciled[0]["position"] - 1))
    assert "missing" not in before  # the past as it was
    export = h.root.parent / f"{h.root.name}.jsonl"
    export.write_text(h.cli.run("export", "vm").stdout)
    assert h.cli.json("replay", str(export), "show", "vm")["missing"] == [frozen]
    broken = {s["name"] for s in state["snapshots"] if s.get("broken")}
    assert broken == {"s3"}  # s3's frozen image; the present rests on it too
    refused = h.cli.run("revert", "vm", "s3", expect=3)
    assert "broken" in refused.stderr
    h.cli.run("verify")  # what is recorded agrees with the disks now
    # the present rests on the gone file and can't be read without it; the others can
    for snap in ("s1", "s2"):
        assert_reads(h.frozen(snap), h.reads[snap], CLUSTERS)
    plan = h.cli.json("delete", "vm", "s3")  # a broken snapshot can be let go
    assert plan["steps"] == []
    assert "s3" not in {s["name"] for s in h.cli.json("show", "vm")["snapshots"]}
    shutil.move(away, frozen)  # and if the file comes back, that is drift again
    refused = h.cli.run("verify", expect=3)
    assert "back on the disk" in refused.stdout + refused.stderr
    assert h.cli.json("reconcile", "vm")["observed"] == [frozen]
    h.check_bytes(skip=("s3",))
    h.cli.run("snapshot", "vm", "s4")
    h.cli.run("verify")


def test_a_backing_changed_by_hand_is_reconciled_with_what_it_now_rests_on(h: History) -> None:
    """The user flattened s1's image onto a new base by hand (`qemu-img rebase`): reconcile
    records the new backing and the new base (read-only, never written)."""
    frozen = h.frozen("s2")  # vda.s1, backed by vda.qcow2
    new_base = make_image(h.root / "newbase.qcow2", SIZE, {0: 0x10})
    subprocess.run(["qemu-img", "rebase", "-q", "-f", "qcow2", "-F", "qcow2", "-b", new_base,
                    frozen], check=True, timeout=60)
    h.cli.run("delete", "vm", "s2", expect=3)
    found = h.cli.json("reconcile", "vm")
    assert found["found"] == [new_base] and frozen in found["observed"]
    explained = h.cli.json("explain", "vm", new_base)
    assert explained["owner"] == "read-only"
    h.check_bytes()
    before = Path(new_base).read_bytes()
    h.cli.run("delete", "vm", "s2")
    h.cli.run("delete", "vm", "s1")
    assert Path(new_base).read_bytes() == before
    h.check_bytes()
    h.cli.run("verify")


def test_reconcile_refuses_what_it_cannot_record(h: History, tmp_path: Path) -> None:
    """A backing pointed outside the VM's directories is not made acceptable by reconcile."""
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    elsewhere.mkdir()
    stray = make_image(elsewhere / "stray.qcow2", SIZE, {0: 0x10})
    subprocess.run(["qemu-img", "rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b", stray,
                    h.frozen("s2")], check=True, timeout=60)
    before = h.cli.state()
    refused = h.cli.run("reconcile", "vm", expect=3)
    assert "outside" in refused.stderr and "Nothing was changed" in refused.stderr
    assert h.cli.state() == before


def test_retire_ends_tracking_and_the_name_can_be_adopted_again(h: History) -> None:
    files = {p.name: p.read_bytes() for p in h.root.glob("vda*")}
    done = h.cli.json("retire", "vm")
    left = set(done["left_behind"])
    assert left == {str(h.root / f"vda.s{n}") for n in (1, 2, 3)}
    assert {p.name: p.read_bytes() for p in h.root.glob("vda*")} == files  # nothing deleted
    assert h.cli.json("list") == []
    assert h.cli.json("show", "vm")["retired"]
    for command in (["snapshot", "vm", "s9"], ["delete", "vm", "s1"], ["retire", "vm"]):
        refused = h.cli.run(*command, expect=2)
        assert "retired" in refused.stderr
    for sweep in (["gc"], ["recover"], ["verify"]):
        h.cli.run(*sweep)
    assert {p.name: p.read_bytes() for p in h.root.glob("vda*")} == files
    entries = h.cli.json("log", "vm")
    retired = [e["position"] for e in entries if e["type"] == "VirtualMachine.Retired"]
    assert len(retired) == 1
    assert not h.cli.json("show", "vm", "--at-event", str(retired[0] - 1)).get("retired")
    assert h.cli.json("show", "vm", "--at-event", str(retired[0]))["retired"]

    h.cli.run("adopt", "vm", "--disk", f"vda={h.root / 'vda.s3'}")  # again: a new VM
    state = h.cli.json("show", "vm")
    assert state["snapshots"] == [] and "retired" not in state
    assert [v["vm"] for v in h.cli.json("list")] == ["vm"]
    h.cli.run("snapshot", "vm", "t1")
    assert h.cli.json("show", "vm")["disks"]["vda"]["active"] == str(h.root / "vda.t1")
    h.cli.run("verify")
    export = h.root / "h.jsonl"
    export.write_text(h.cli.run("export").stdout)
    replayed = h.cli.json("replay", str(export), "show", "vm")
    assert [s["name"] for s in replayed["snapshots"]] == ["t1"]


def test_retire_is_refused_while_an_operation_is_open(h: History) -> None:
    script = (
        "import os, sys\n"
        "from snapledger.adapters.eventstore.application import LedgerApplication\n"
        "from snapledger.adapters.storage.qemu_img import QemuImgStorage\n"
        "from snapledger.adapters.compose import ledger_service\n"
        "class Dies(QemuImgStorage):\n"
        "    def commit(self, top, base, *, fmt):\n"
        "        os._exit(9)\n"
        "ledger_service(LedgerApplication(sys.argv[1]), Dies()).delete('vm', 's2', strategy='commit')\n"
    )
    died = subprocess.run([sys.executable, "-c", script, h.cli.env["SNAPLEDGER_STORE"]],
                          capture_output=True, timeout=120)
    assert died.returncode == 9
    h.cli.run("retire", "vm", expect=4)
    h.cli.run("reconcile", "vm", expect=4)
    h.cli.run("recover")
    h.cli.run("retire", "vm")
