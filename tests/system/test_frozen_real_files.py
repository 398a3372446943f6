"""Frozen means frozen, on real qcow2 files through the command line.

A frozen image rewritten in place (what a hand-run `virsh blockcommit --active` then `blockjob
--abort` leaves: same size, same inode, other bytes) is drift: verify names it, a delete is
refused and changes nothing, reconcile records it, then verify is clean. A ctime moved alone
(a chmod) is drift too for a VM outside libvirt. And snapledger's own writes never look like
drift: verify is clean after every command of a whole history. Every byte is read back with
qemu-io.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cli_helpers import Cli
from qemu_helpers import CLUSTER, assert_reads, make_image, qemu_io, write_clusters

CLUSTERS = 16
SIZE = CLUSTERS * CLUSTER


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def show(cli: Cli) -> dict[str, object]:
    state: dict[str, object] = cli.json("show", "vm")
    return state


def active(cli: Cli) -> str:
    return str(cli.json("show", "vm")["disks"]["vda"]["active"])


def frozen(cli: Cli, snapshot: str) -> str:
    snaps = cli.json("show", "vm")["snapshots"]
    return str(next(s for s in snaps if s["name"] == snapshot)["disks"]["vda"])


def every_file(cli: Cli) -> dict[str, tuple[str, int, int, int, int]]:
    """Each image file's checksum, size, inode, mtime and ctime: what a refusal leaves alone."""
    out = {}
    for p in sorted(cli.dir.iterdir()):
        if p.is_file() and ".sqlite" not in p.name:
            seen = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            out[p.name] = (digest, seen.st_size, seen.st_ino, seen.st_mtime_ns, seen.st_ctime_ns)
    return out


def two_snapshots(cli: Cli) -> dict[str, dict[int, int]]:
    """vm over base.qcow2: s1 freezes base.qcow2, s2 base.s1; base.s2 is active."""
    disk = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10, 1: 0x11})
    cli.run("adopt", "vm", "--disk", f"vda={disk}")
    cli.run("snapshot", "vm", "s1")
    write_clusters(active(cli), {2: 0x22})
    cli.run("snapshot", "vm", "s2")
    write_clusters(active(cli), {3: 0x23})
    cli.run("verify")
    return {"s1": {0: 0x10, 1: 0x11}, "s2": {0: 0x10, 1: 0x11, 2: 0x22}}


def test_a_frozen_image_rewritten_in_place_is_found_refused_and_reconciled(cli: Cli) -> None:
    reads = two_snapshots(cli)
    image = frozen(cli, "s1")
    assert image == cli.path("base.qcow2")
    before = os.stat(image)
    qemu_io(image, ["write -P 0x66 0 64k"])  # cluster 0 was allocated: rewritten in place
    after = os.stat(image)
    assert (after.st_size, after.st_ino, after.st_dev) == (before.st_size, before.st_ino, before.st_dev)
    assert after.st_mtime_ns != before.st_mtime_ns

    found = cli.run("verify", expect=3)
    lines = [line for line in found.stdout.splitlines() if image in line]
    assert len(lines) == 1 and "modified since it was frozen (mtime " in lines[0], found.stdout
    assert "size" not in lines[0] and "inode" not in lines[0]

    files = every_file(cli)
    refused = cli.run("delete", "vm", "s2", expect=3)
    assert image in refused.stderr and "modified since it was frozen" in refused.stderr
    assert "snapledger reconcile vm" in refused.stderr
    cli.run("delete", "vm", "s2", "--strategy", "pull", expect=3)
    cli.run("revert", "vm", "s1", expect=3)
    assert every_file(cli) == files, "a refused command changed a file"
    assert [s["name"] for s in cli.json("show", "vm")["snapshots"]] == ["s1", "s2"]

    dry = cli.json("reconcile", "vm", "--dry-run")
    assert image in dry["observed"]
    assert [c for c in dry["changes"] if c.startswith(f"{image}: modified since it was frozen")]
    cli.run("verify", expect=3)  # a dry run records nothing
    cli.json("reconcile", "vm")
    assert every_file(cli) == files, "reconcile wrote an image"
    cli.run("verify")

    cli.run("delete", "vm", "s2")  # works again; s1 reads what its image holds now
    cli.run("verify")
    assert_reads(frozen(cli, "s1"), {**reads["s1"], 0: 0x66}, CLUSTERS)
    assert_reads(active(cli), {**reads["s2"], 0: 0x66, 3: 0x23}, CLUSTERS)


def test_a_ctime_moved_alone_is_found_for_a_vm_outside_libvirt(cli: Cli) -> None:
    two_snapshots(cli)
    image = frozen(cli, "s2")
    before = os.stat(image)
    os.chmod(image, before.st_mode & 0o7777)  # the mode it had: only the ctime moves
    after = os.stat(image)
    assert after.st_mtime_ns == before.st_mtime_ns and after.st_ctime_ns != before.st_ctime_ns
    found = cli.run("verify", expect=3)
    assert f"{image}: changed since it was frozen (ctime " in found.stdout, found.stdout
    cli.run("delete", "vm", "s2", expect=3)
    cli.json("reconcile", "vm")
    cli.run("verify")


def test_snapledgers_own_operations_leave_no_drift_in_a_whole_history(cli: Cli) -> None:
    """Snapshots, reverts, deletes by commit (into a frozen image) and by pull (into a frozen
    image and into the active one), a branch point pulled, gc: verify is clean after each."""
    disk = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10})
    reads: dict[str, dict[int, int]] = {}
    present = {0: 0x10}

    def run(*args: str) -> None:
        cli.run(*args)
        cli.run("verify")

    def snapshot(name: str, writes: dict[int, int]) -> None:
        run("snapshot", "vm", name)
        reads[name] = dict(present)
        write_clusters(active(cli), writes)
        present.update(writes)

    def check() -> None:
        for snap in cli.json("show", "vm")["snapshots"]:
            assert_reads(snap["disks"]["vda"], reads[snap["name"]], CLUSTERS)
        assert_reads(active(cli), present, CLUSTERS)

    run("adopt", "vm", "--disk", f"vda={disk}")
    snapshot("s1", {1: 0x21})
    snapshot("s2", {2: 0x22, 1: 0x12})
    snapshot("s3", {3: 0x23})
    run("delete", "vm", "s2", "--strategy", "commit")  # base.s2 into base.s1, frozen for s3
    del reads["s2"]
    check()
    run("revert", "vm", "s1")  # base.s3, a snapshot-less present, goes
    present = dict(reads["s1"])
    write_clusters(active(cli), {4: 0x41})
    present[4] = 0x41
    snapshot("s4", {5: 0x51})
    snapshot("s5", {6: 0x61})
    run("delete", "vm", "s4", "--strategy", "pull")  # base.s1-1 into base.s4, frozen for s5
    del reads["s4"]
    check()
    run("delete", "vm", "s5", "--strategy", "pull")  # into the active image
    del reads["s5"]
    check()
    run("revert", "vm", "s3")
    present = dict(reads["s3"])
    write_clusters(active(cli), {7: 0x71})
    present[7] = 0x71
    snapshot("s6", {8: 0x81})
    run("revert", "vm", "s1")  # s1's image (base.qcow2) now has two branches below
    present = dict(reads["s1"])
    snapshot("s7", {9: 0x91})
    run("delete", "vm", "s3", "--branches", "pull")
    del reads["s3"]
    check()
    run("delete", "vm", "s6")
    del reads["s6"]
    run("gc")
    run("gc", "--include-detached")
    check()
    run("delete", "vm", "s1")
    del reads["s1"]
    check()
    assert os.path.exists(disk)
