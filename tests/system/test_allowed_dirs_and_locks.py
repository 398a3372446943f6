"""A VM's files stay in its directories, and an image another process holds is a conflict.

On real qcow2 files through the command line: a disk whose backing chain leaves the VM's
directories (its disks' directories and its `--pool`s) is refused at adopt and at swap-disk; a
backing pointer rewritten behind our back to a file outside is reported by verify and refuses
every destructive operation, which never opens that file; symlinked directories are resolved
first, so they are no way out. `recover` meeting an image still locked by another process exits
with 4, records nothing, and succeeds once the lock is gone.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Cli
from qemu_helpers import (
    CLUSTER,
    assert_reads,
    held_image,
    make_image,
    set_backing_unchecked,
    write_clusters,
)

CLUSTERS = 16
SIZE = CLUSTERS * CLUSTER


class Layout:
    """<tmp>/vm (the VM's disk), <tmp>/templates (a template), <tmp>/elsewhere (no VM's)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.vm = root / "vm"
        self.templates = root / "templates"
        self.elsewhere = root / "elsewhere"
        for directory in (self.vm, self.templates, self.elsewhere):
            directory.mkdir()
        self.template = make_image(self.templates / "template.qcow2", SIZE, {0: 0x70, 7: 0x77})
        self.stray = make_image(self.elsewhere / "stray.qcow2", SIZE, {0: 0xEE, 3: 0xEE})
        self.cli = Cli(root)


@pytest.fixture
def lay(tmp_path: Path) -> Layout:
    return Layout(tmp_path)


def world(cli: Cli) -> tuple[list[str], dict[str, tuple[str, int]]]:
    """The ledger's event types and every file's checksum and mtime, in every directory."""
    files = {
        str(p.relative_to(cli.dir)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(cli.dir.rglob("*"))
        if p.is_file() and not p.is_symlink() and "ledger.sqlite" not in p.name
    }
    return [e["type"] for e in cli.json("log")], files


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# ---- adopt ---------------------------------------------------------------------------------


def test_adopt_refuses_a_template_outside_and_accepts_it_with_its_pool(lay: Layout) -> None:
    cli = lay.cli
    disk = make_image(lay.vm / "vda.qcow2", SIZE, {1: 0x11}, backing=lay.template)
    refused = cli.run("adopt", "vm", "--disk", f"vda={disk}", expect=2)
    message = one_line_error(refused)
    assert lay.template in message and f"--pool {lay.templates}" in message, message
    assert cli.json("log") == []  # nothing recorded
    assert cli.json("list") == []

    cli.run("adopt", "vm", "--disk", f"vda={disk}", "--pool", str(lay.templates))
    assert cli.json("show", "vm")["disks"]["vda"]["chain"] == [disk, lay.template]
    cli.run("snapshot", "vm", "s1")
    cli.run("verify")


def test_a_symlinked_directory_is_no_way_out(lay: Layout) -> None:
    cli = lay.cli
    (lay.vm / "tpl").symlink_to(lay.templates)  # looks like a subdirectory of the VM's
    disk = make_image(lay.vm / "vda.qcow2", SIZE, {1: 0x11})
    set_backing_unchecked(disk, str(lay.vm / "tpl" / "template.qcow2"), "qcow2")
    before = world(cli)
    refused = cli.run("adopt", "vm", "--disk", f"vda={disk}", expect=2)
    message = one_line_error(refused)
    assert f"resolves to {lay.template}" in message and f"--pool {lay.templates}" in message
    # a disk that is itself a symlink to a file outside
    (lay.vm / "link.qcow2").symlink_to(lay.stray)
    refused = cli.run("adopt", "vm", "--disk", f"vda={lay.vm / 'link.qcow2'}", expect=2)
    assert f"resolves to {lay.stray}" in one_line_error(refused)
    assert world(cli) == before

    # with the templates' real directory as a pool the chain is inside, but its backing pointer
    # still names the template by a second name: refused until it names the real file
    refused = cli.run("adopt", "vm", "--disk", f"vda={disk}", "--pool", str(lay.templates), expect=2)
    message = one_line_error(refused)
    assert "goes through a symbolic link" in message and f"qemu-img rebase -u -b {lay.template}" in message
    assert world(cli) == before
    set_backing_unchecked(disk, str(lay.template), "qcow2")  # what the message says to do
    cli.run("adopt", "vm", "--disk", f"vda={disk}", "--pool", str(lay.templates))
    cli.run("verify")


def test_an_overlay_the_user_names_must_not_go_through_a_symlink(lay: Layout) -> None:
    cli = lay.cli
    disk = make_image(lay.vm / "vda.qcow2", SIZE, {1: 0x11})
    (lay.vm / "out").symlink_to(lay.elsewhere)
    refused = cli.run("adopt", "vm", "--disk", f"vda={disk}", "--pool", str(lay.vm / "out"), expect=2)
    assert f"--pool {lay.vm / 'out'} goes through a symbolic link" in one_line_error(refused)
    cli.run("adopt", "vm", "--disk", f"vda={disk}")
    before = world(cli)
    for overlay in (lay.vm / "out" / "s1.qcow2", lay.elsewhere / "s1.qcow2"):
        refused = cli.run("snapshot", "vm", "s1", "--overlay", f"vda={overlay}", expect=2)
        one_line_error(refused)
    assert world(cli) == before
    assert not (lay.elsewhere / "s1.qcow2").exists()


# ---- swap-disk -----------------------------------------------------------------------------


def test_swap_disk_refuses_a_chain_that_leaves_the_vms_directories(lay: Layout) -> None:
    cli = lay.cli
    disk = make_image(lay.vm / "vda.qcow2", SIZE, {1: 0x11}, backing=lay.template)
    cli.run("adopt", "vm", "--disk", f"vda={disk}", "--pool", str(lay.templates))
    cli.run("snapshot", "vm", "s1")
    over_stray = make_image(lay.vm / "new.qcow2", SIZE, {2: 0x22}, backing=lay.stray)
    outside = make_image(lay.elsewhere / "own.qcow2", SIZE, {2: 0x22})
    before = world(cli)
    refused = cli.run("swap-disk", "vm", "vda", over_stray, expect=2)
    assert lay.stray in one_line_error(refused)
    refused = cli.run("swap-disk", "vm", "vda", outside, expect=2)
    assert outside in one_line_error(refused)
    assert world(cli) == before

    # a new disk over the pool's template is fine
    inside = make_image(lay.vm / "fine.qcow2", SIZE, {2: 0x22}, backing=lay.template)
    cli.run("swap-disk", "vm", "vda", inside)
    assert cli.json("show", "vm")["disks"]["vda"]["active"] == inside
    cli.run("verify")


# ---- a backing pointer rewritten behind our back -------------------------------------------


def history(lay: Layout) -> dict[str, Any]:
    """vda.qcow2 over the pool's template; s1 freezes vda.qcow2, s2 freezes vda.s1, the
    present is vda.s2. Deleting s2 merges vda.s1 and vda.s2."""
    cli = lay.cli
    disk = make_image(lay.vm / "vda.qcow2", SIZE, {1: 0x11}, backing=lay.template)
    cli.run("adopt", "vm", "--disk", f"vda={disk}", "--pool", str(lay.templates))
    cli.run("snapshot", "vm", "s1")
    write_clusters(lay.vm / "vda.s1", {2: 0x22})
    cli.run("snapshot", "vm", "s2")
    write_clusters(lay.vm / "vda.s2", {3: 0x33})
    return cli.json("show", "vm")  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "rewritten, was",
    [
        ("templates/template.qcow2", None),  # deep in the chain: only the merge would open it
        ("vm/vda.s1", "vm/vda.qcow2"),  # the image the merge writes
        ("vm/vda.s2", "vm/vda.s1"),  # the active image
    ],
)
def test_a_backing_rewritten_to_point_outside_is_found_and_never_followed(
    lay: Layout, rewritten: str, was: str | None
) -> None:
    cli = lay.cli
    history(lay)
    image = lay.root / rewritten
    subprocess.run(
        ["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", lay.stray, "-F", "qcow2", str(image)],
        check=True, capture_output=True, timeout=60,
    )
    events_before, files_before = world(cli)

    found = cli.run("verify", expect=3)
    assert f"backing file {lay.stray}" in found.stdout and "outside" in found.stdout, found.stdout
    for strategy in ("commit", "pull"):
        refused = cli.run("delete", "vm", "s2", "--strategy", strategy, expect=3)
        message = one_line_error(refused)
        assert lay.stray in message and "outside" in message, message
    events_after, files_after = world(cli)
    assert files_after == files_before  # no file was touched
    recorded = {t.rsplit(".", 1)[-1] for t in events_after[len(events_before):]}
    assert "DriftDetected" in recorded  # the finding; fresh sizes of the active image may come along
    assert recorded <= {"DriftDetected", "ImagesObserved", "OperationRefused"}, recorded  # no operation was started

    # put the pointer back: the delete goes through and every byte is where it was
    if was is None:
        subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "", str(image)],
                       check=True, capture_output=True, timeout=60)
    else:
        set_backing_unchecked(image, str(lay.root / was), "qcow2")
    if rewritten != "vm/vda.s2":
        # not the active image: its header was written twice, and a frozen image's content
        # never changes (frozen means frozen): drift by its mtime until reconcile records it
        found = cli.run("verify", expect=3)
        assert f"{image}: modified since it was frozen (mtime " in found.stdout, found.stdout
        cli.run("delete", "vm", "s2", expect=3)
        cli.json("reconcile", "vm")
    cli.run("verify")
    cli.run("delete", "vm", "s2")
    state = cli.json("show", "vm")
    assert_reads(state["disks"]["vda"]["active"], {0: 0x70, 7: 0x77, 1: 0x11, 2: 0x22, 3: 0x33},
                 CLUSTERS)
    assert_reads(state["snapshots"][0]["disks"]["vda"], {0: 0x70, 7: 0x77, 1: 0x11}, CLUSTERS)
    cli.run("verify")


# ---- recover meets an image another process still holds --------------------------------------


DIES_AT_THE_MERGE = """
import os, sys
from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.qemu_img import QemuImgStorage
from snapledger.adapters.service.commands import Snapledger

class DiesAtTheMerge(QemuImgStorage):
    def commit(self, top, base, *, fmt):
        os._exit(9)  # killed before the commit: nothing after this point runs

ledger_service(LedgerApplication(sys.argv[1]), DiesAtTheMerge()).delete("vm", "s2", strategy="commit")
"""


@pytest.fixture
def interrupted(lay: Layout) -> Layout:
    """s2's delete (commit vda.s2 into vda.s1) recorded, then the process died before the
    commit ran: an open operation for `recover`."""
    history(lay)
    died = subprocess.run([sys.executable, "-c", DIES_AT_THE_MERGE, lay.cli.env["SNAPLEDGER_STORE"]],
                          capture_output=True, text=True, timeout=120, check=False)
    assert died.returncode == 9, died.stderr
    assert [vm["operation"] for vm in lay.cli.json("list")] == ["delete"]
    return lay


def test_recover_waits_for_a_process_that_still_holds_an_image(interrupted: Layout) -> None:
    lay = interrupted
    cli = lay.cli
    with held_image(lay.vm / "vda.s1"):  # the commit's target
        before = world(cli)
        for _ in range(2):  # as often as it is tried
            refused = cli.run("recover", expect=4)
            message = one_line_error(refused)
            assert "another process still holds" in message and str(lay.vm / "vda.s1") in message
            assert "recover" in message.split("still holds", 1)[1]
        assert world(cli)[0] == before[0]  # nothing recorded: no OperationFailed
        assert [vm["operation"] for vm in cli.json("list")] == ["delete"]
        other = cli.run("snapshot", "vm", "s3", expect=4)  # the VM is still busy with the delete
        assert "recover" in one_line_error(other)

    assert "finished delete" in cli.run("recover").stdout
    state = cli.json("show", "vm")
    assert [s["name"] for s in state["snapshots"]] == ["s1"]
    assert_reads(state["disks"]["vda"]["active"], {0: 0x70, 7: 0x77, 1: 0x11, 2: 0x22, 3: 0x33},
                 CLUSTERS)
    assert not os.path.exists(lay.vm / "vda.s2")
    cli.run("verify")


def test_a_delete_meeting_a_held_image_is_refused_before_anything_is_recorded(lay: Layout) -> None:
    """Another process holds the commit's target: QEMU's lock is looked at before the plan is
    recorded (exit 4, naming the image and the holder), nothing is recorded, and the VM stays
    usable."""
    cli = lay.cli
    history(lay)
    with held_image(lay.vm / "vda.s1"):
        before = world(cli)
        for dry in ([], ["--dry-run"]):
            refused = cli.run("delete", "vm", "s2", "--strategy", "commit", *dry, expect=4)
            message = one_line_error(refused)
            assert "nothing was done" in message and str(lay.vm / "vda.s1") in message
            assert "qemu-io" in message  # the holder is named
        assert world(cli) == before
        assert [vm["operation"] for vm in cli.json("list")] == [None]
    cli.run("delete", "vm", "s2", "--strategy", "commit")
    cli.run("verify")
