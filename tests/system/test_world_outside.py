"""Nothing outside the ledger is hurt: formats never guessed, images another process holds, hard
links, a missing qemu-img, files missing below a chain, dry runs as strict as real runs.

On real qcow2 and raw files through the command line; what a guest reads is checked with qemu-io
and qemu-img convert, never by asking snapledger.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import Cli
from qemu_helpers import CLUSTER, assert_reads, held_image, make_image, qemu_io, raw_bytes

CLUSTERS = 16
SIZE = CLUSTERS * CLUSTER
VICTIM = 0xEE  # every cluster of the other VM's image


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def event_types(cli: Cli) -> list[str]:
    return [e["type"].rpartition(".")[2] for e in cli.json("log")]


def qemu_img_info(path: str) -> dict[str, object]:
    done = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], capture_output=True,
                          text=True, check=True, timeout=60)
    info: dict[str, object] = json.loads(done.stdout)
    return info


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


# ---- formats are never guessed -------------------------------------------------------------


def forged_header(scratch: Path, victim: str, variant: str) -> bytes:
    """What a hostile guest writes at offset 0 of its raw disk: a qcow2 header (made by qemu-img
    itself) whose backing file is another VM's image."""
    fake = scratch / "forged.qcow2"
    if variant == "json: backing":
        spec = {"driver": "qcow2", "file": {"driver": "file", "filename": victim}}
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "qcow2",
                "-b", "json:" + json.dumps(spec), str(fake), str(SIZE)]
    else:
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", victim, str(fake)]
    subprocess.run(argv, check=True, timeout=60, capture_output=True)
    header = fake.read_bytes()[:CLUSTER]
    fake.unlink()
    return header[:8] if variant == "partial header" else header


@pytest.mark.parametrize("variant", ["qcow2 header", "partial header", "json: backing"])
def test_a_raw_disk_stays_raw_whatever_its_guest_writes(cli: Cli, tmp_path: Path, variant: str) -> None:
    """The classic format-probing hole: the guest of a raw disk writes a qcow2 header naming
    another VM's image; a commit puts it into the raw file; the next snapshot's overlay must
    still read the raw file as raw, so the VM keeps reading its own bytes."""
    other = tmp_path / "other"
    other.mkdir()
    victim = make_image(other / "victim.qcow2", SIZE, {c: VICTIM for c in range(CLUSTERS)})
    disk = make_image(tmp_path / "vda.img", SIZE, {1: 0x11, 2: 0x22}, fmt="raw")
    cli.run("adopt", "victim", "--disk", f"vda={victim}")
    cli.run("adopt", "vm", "--disk", f"vda={disk}")
    cli.run("snapshot", "vm", "s1")
    active = cli.json("show", "vm")["disks"]["vda"]["active"]
    header = forged_header(tmp_path, victim, variant)
    source = tmp_path / "header.bin"
    source.write_bytes(header)
    qemu_io(active, [f"write -s {source} 0 {len(header)}"])  # the guest writes it
    source.unlink()
    expected = bytearray(SIZE)
    expected[CLUSTER : 2 * CLUSTER] = bytes([0x11]) * CLUSTER
    expected[2 * CLUSTER : 3 * CLUSTER] = bytes([0x22]) * CLUSTER
    expected[: len(header)] = header

    cli.run("delete", "vm", "s1")  # commits the header into the raw disk itself
    assert Path(disk).read_bytes()[: len(header)] == header
    assert cli.json("show", "vm")["disks"]["vda"]["chain"] == [disk]
    cli.run("snapshot", "vm", "s2")
    state = cli.json("show", "vm")
    overlay = state["disks"]["vda"]["active"]
    assert state["disks"]["vda"]["chain"] == [overlay, disk]
    assert qemu_img_info(overlay)["backing-filename-format"] == "raw"
    assert raw_bytes(overlay) == bytes(expected)  # the guest reads its own bytes
    assert raw_bytes(disk, fmt="raw") == bytes(expected)
    cli.run("verify")
    cli.run("delete", "vm", "s2")  # and back into the raw file, still raw
    assert raw_bytes(disk, fmt="raw") == bytes(expected)
    assert_reads(victim, {c: VICTIM for c in range(CLUSTERS)}, CLUSTERS)
    cli.run("verify")


# ---- images another process holds ----------------------------------------------------------


def three_snapshots(cli: Cli, tmp_path: Path) -> str:
    disk = make_image(tmp_path / "vda.qcow2", SIZE, {0: 0x10})
    cli.run("adopt", "vm", "--disk", f"vda={disk}")
    for n in (1, 2, 3):
        cli.run("snapshot", "vm", f"s{n}")
        active = cli.json("show", "vm")["disks"]["vda"]["active"]
        qemu_io(active, [f"write -P {0x20 + n:#x} {n * CLUSTER} {CLUSTER}"])
    return disk


def test_an_image_held_for_writing_is_never_frozen_abandoned_or_deleted(
    cli: Cli, tmp_path: Path
) -> None:
    """A process (a VM run outside libvirt) writes the present: snapshot would freeze it, revert
    would delete it, gc and delete would write or delete what it reads. Each exits 4 naming the
    image and its holder, records nothing and changes no file, dry runs included."""
    three_snapshots(cli, tmp_path)
    state = cli.json("show", "vm")
    present, chain = state["disks"]["vda"]["active"], state["disks"]["vda"]["chain"]
    with held_image(present) as holder:  # QEMU opens the chain below for reading
        before = cli.state()
        for command in (["snapshot", "vm", "s4"], ["revert", "vm", "s1"], ["revert", "vm", "s2",
                        "--dry-run"], ["delete", "vm", "s3"], ["delete", "vm", "s3", "--dry-run"],
                        ["delete", "vm", "s2"]):
            refused = cli.run(*command, expect=4)
            message = one_line(refused)
            held = present if command[0] in ("snapshot", "revert") else None
            assert held is None or f"holds {held}: " in message, message
            assert any(f"holds {p}: " in message for p in chain), message
            assert f"qemu-io (pid {holder.pid}) has it open" in message, message
            assert "nothing was done" in message
        assert cli.state() == before
    cli.run("revert", "vm", "s1")  # once it has let go
    assert not os.path.exists(present)
    cli.run("verify")


# ---- hard links ----------------------------------------------------------------------------


def test_a_hard_linked_image_is_never_written_or_deleted(cli: Cli, tmp_path: Path) -> None:
    """`ln vda.s1 backup/keep.qcow2`, then deleting s2 (frozen at vda.s1) by a commit into it or
    by a pull that deletes it: refused as drift (exit 3, naming the link count), the "backup"
    unchanged; a dry run says the same."""
    three_snapshots(cli, tmp_path)
    frozen = cli.json("show", "vm")["snapshots"][1]["disks"]["vda"]  # s2's: vda.s1
    backup = tmp_path / "backup"
    backup.mkdir()
    os.link(frozen, backup / "keep.qcow2")
    kept = (backup / "keep.qcow2").read_bytes()
    for strategy in ("commit", "pull"):
        for dry in (["--dry-run"], []):
            before = cli.state()
            refused = cli.run("delete", "vm", "s2", "--strategy", strategy, *dry, expect=3)
            assert "2 hard links" in one_line(refused) and frozen in one_line(refused)
            assert cli.state()[1] == before[1]
        assert event_types(cli)[-2:] == ["DriftDetected", "OperationRefused"]  # why it refused, and the attempt
    assert (backup / "keep.qcow2").read_bytes() == kept
    # The link moved vda.s1's ctime: for a VM outside libvirt that is drift (frozen means
    # frozen: a ctime can't say a link from a rewrite whose mtime was set back), named until
    # reconcile records it. The link itself stays unacceptable for what writes or deletes it.
    assert_ctime_drift(cli, frozen)
    cli.run("delete", "vm", "s3")  # it only reads vda.s1
    assert (backup / "keep.qcow2").read_bytes() == kept
    cli.run("delete", "vm", "s2", "--strategy", "commit", expect=3)  # still 2 links
    (backup / "keep.qcow2").unlink()  # the ctime moves again
    assert_ctime_drift(cli, frozen)
    cli.run("delete", "vm", "s2", "--strategy", "commit")
    cli.run("verify")


def assert_ctime_drift(cli: Cli, path: str) -> None:
    """Only `path`'s ctime moved: verify names it (exit 3) and reconcile records it."""
    found = cli.run("verify", expect=3)
    lines = [line for line in found.stdout.splitlines() if "vm: " in line]
    assert len(lines) == 1 and f"{path}: changed since it was frozen (ctime " in lines[0], lines
    cli.json("reconcile", "vm")
    cli.run("verify")


# ---- the tool's own environment ------------------------------------------------------------


def test_qemu_img_missing_is_the_tools_trouble_not_drift(cli: Cli, tmp_path: Path) -> None:
    three_snapshots(cli, tmp_path)
    before = cli.state()
    empty = tmp_path / "no-tools"
    empty.mkdir()
    cli.env["PATH"] = str(empty)
    for command in (["snapshot", "vm", "s4"], ["delete", "vm", "s2"], ["revert", "vm", "s1"]):
        refused = cli.run(*command, expect=1)
        assert "qemu-img" in one_line(refused) and "qemu-utils" in one_line(refused)
    # What only reads plain qcow2 files reads them in process (adapters/storage/qcow2_layer.py)
    cli.run("delete", "vm", "s2", "--dry-run")
    cli.run("verify")
    del cli.env["PATH"]
    cli.env["PATH"] = os.environ["PATH"]
    assert cli.state() == before  # nothing recorded, no DriftDetected
    assert "DriftDetected" not in event_types(cli)
    cli.run("verify")
    cli.run("snapshot", "vm", "s4")


# ---- checks before anything is recorded ----------------------------------------------------


def test_a_file_missing_below_a_chain_is_refused_before_anything_is_recorded(
    cli: Cli, tmp_path: Path
) -> None:
    """The bottom of the chain is moved away: a delete above it is refused with exit 3 (a
    dry run too) before an operation is opened, so the VM is not left blocked; once the file is
    back (its ctime moved by the renames: drift outside libvirt, recorded by reconcile) the same
    delete works."""
    disk = three_snapshots(cli, tmp_path)
    away = tmp_path / "away.qcow2"
    shutil.move(disk, away)
    for dry in (["--dry-run"], []):
        refused = cli.run("delete", "vm", "s3", *dry, expect=3)
        assert disk in one_line(refused)
    assert [vm["operation"] for vm in cli.json("list")] == [None]
    assert "OperationStarted" not in event_types(cli)[-3:]
    shutil.move(away, disk)  # a rename moves the file's ctime, twice
    cli.run("delete", "vm", "s3", expect=3)
    assert_ctime_drift(cli, disk)
    cli.run("delete", "vm", "s3")
    cli.run("verify")


def test_a_dry_run_over_a_drifted_chain_is_refused_like_the_real_run(
    cli: Cli, tmp_path: Path
) -> None:
    """s2's frozen image replaced by a copy of itself (a new inode): the dry run exits 3 as the
    real run does, and records nothing."""
    three_snapshots(cli, tmp_path)
    frozen = cli.json("show", "vm")["snapshots"][1]["disks"]["vda"]
    shutil.copy(frozen, frozen + ".copy")
    os.replace(frozen + ".copy", frozen)
    before = cli.state()
    refused = cli.run("delete", "vm", "s2", "--dry-run", expect=3)
    assert frozen in one_line(refused)
    assert cli.state() == before
    cli.run("delete", "vm", "s2", expect=3)


def test_an_overlay_path_qemu_img_would_misread_is_bad_input(cli: Cli, tmp_path: Path) -> None:
    """`--overlay vda=/dir/x:y` on a two-disk VM: exit 2 before anything is recorded, so a plain
    snapshot then gets the default overlay names."""
    vda = make_image(tmp_path / "vda.qcow2", SIZE)
    vdb = make_image(tmp_path / "vdb.qcow2", SIZE)
    cli.run("adopt", "vm", "--disk", f"vda={vda}", "--disk", f"vdb={vdb}")
    before = cli.state()
    for bad in (f"{tmp_path}/x:y", f"{tmp_path}/x\ny"):
        refused = cli.run("snapshot", "vm", "s1", "--overlay", f"vda={bad}", expect=2)
        assert "overlay" in one_line(refused) or "path" in one_line(refused)
    assert cli.state() == before
    cli.run("snapshot", "vm", "s1")
    assert cli.json("show", "vm")["snapshots"][0]["name"] == "s1"


# ---- the ledger's own filesystem full ------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "ledger-fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"this test needs root to mount a tmpfs: {done.stderr}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_ledger_is_one_line_and_recover_finishes_once_there_is_space(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    """The ledger's filesystem fills up: every command exits 1 with one line (no traceback,
    nothing recorded as drift, no image touched that the ledger did not record first; SQLite
    can't even open a WAL ledger for reading on a full filesystem); once space is freed, recover
    and the same commands work, and every snapshot reads as before."""
    images = tmp_path / "images"
    images.mkdir()
    cli = Cli(images)
    cli.env["SNAPLEDGER_STORE"] = f"sqlite:///{small_tmpfs}/ledger.sqlite"
    three_snapshots(cli, images)
    state = cli.json("show", "vm")
    reads = {s["name"]: raw_bytes(s["disks"]["vda"]) for s in state["snapshots"]}
    present = raw_bytes(state["disks"]["vda"]["active"])
    filler = small_tmpfs / "filler"
    with open(filler, "wb") as out:  # fill every last block
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    files_before = sorted(p.name for p in images.iterdir())
    for command in (["snapshot", "vm", "s4"], ["delete", "vm", "s2"], ["revert", "vm", "s1"],
                    ["gc"], ["recover"]):
        refused = cli.run(*command, expect=1)
        assert "store" in one_line(refused) or "ledger" in one_line(refused), one_line(refused)
    assert sorted(p.name for p in images.iterdir()) == files_before  # no file left behind
    filler.unlink()
    assert [s["name"] for s in cli.json("show", "vm")["snapshots"]] == ["s1", "s2", "s3"]
    cli.run("recover")
    assert "DriftDetected" not in event_types(cli)
    state = cli.json("show", "vm")
    assert {s["name"]: raw_bytes(s["disks"]["vda"]) for s in state["snapshots"]} == reads
    assert raw_bytes(state["disks"]["vda"]["active"]) == present
    cli.run("verify")
    cli.run("delete", "vm", "s2")
    cli.run("verify")


def test_the_ledger_among_the_images_is_never_a_disk_nor_opened_by_a_scan(
    cli: Cli, tmp_path: Path
) -> None:
    """The ledger's SQLite file lies in the VM's directory: adopting it as a disk is bad input,
    and deleting snapshots (whose header scans look at every file there) leaves it whole."""
    ledger = tmp_path / "ledger.sqlite"
    three_snapshots(cli, tmp_path)
    refused = cli.run("adopt", "other", "--disk", f"vda={ledger}", expect=2)
    assert "ledger" in one_line(refused)
    cli.run("delete", "vm", "s2")
    cli.run("delete", "vm", "s3")
    cli.run("verify")
    check = subprocess.run(["sqlite3", str(ledger), "PRAGMA integrity_check"], capture_output=True,
                           text=True, timeout=60, check=True)
    assert check.stdout.strip() == "ok"
