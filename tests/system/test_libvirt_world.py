"""Issue 10 on a real libvirtd: libvirt's world outside the ledger.

Tiny running TCG domains (tests/libvirt_helpers.py); live merges slowed down with the test knob
SNAPLEDGER_TEST_JOB_BANDWIDTH so that a domain can be destroyed (or snapledger killed) while the
job runs, and SNAPLEDGER_TEST_PAUSE_AFTER_PIVOT to kill snapledger right after its own pivot.
Every test ends with the domain running (started by `virsh start`/`create` or by `recover`) and
checks the bytes of every snapshot's frozen image (`qemu-io -r -U`) and the guest's latest
writes, on the running disk (HMP qemu-io) and on the files once it is shut off.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import libvirt
import pytest
from cli_helpers import Cli
from libvirt_helpers import URI, Domains
from qemu_helpers import make_image, qemu_io
from test_libvirt_restart import (
    ACTIVE_COMMIT,
    BULK,
    COMMIT,
    DEADLINE,
    MIB,
    SIZE,
    Background,
    _domblklist,
    _job,
    _operation,
    _running_job,
    _steps_done,
    assert_file_reads,
    assert_running_reads,
    background,
    content,
    libvirt_vms,
    libvirtd,
    wait_for,
)

from snapledger.adapters.libvirt.hypervisor import TEST_PAUSE_AFTER_PIVOT_ENV
from snapledger.adapters.libvirt.xml import disk_sources

__all__ = ["background", "libvirt_vms", "libvirtd"]  # fixtures


def _setup(tmp_path: Path, vms: Domains, *, persistent: bool = True) -> tuple[Cli, str, str]:
    """A running domain on a 16 MiB disk whose first cluster reads 0x01, adopted."""
    base = make_image(vms.path("vda.qcow2"), SIZE, {0: 0x01})
    name = vms.new({"vda": base}, persistent=persistent)
    cli = Cli(tmp_path)
    cli.run("adopt", name, "--libvirt")
    return cli, name, base


def _recorded_definition(cli: Cli, name: str, tmp_path: Path) -> Path:
    """The definition `show --json` gives, in a file for `virsh create`/`define`."""
    xml = cli.json("show", name)["domain_xml"]
    path = tmp_path / f"{name}.xml"
    path.write_text(xml)
    return path


def _virsh(*args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True,
                          timeout=DEADLINE, check=False)
    assert done.returncode == expect, (args, done.stdout, done.stderr)
    return done


def _files(*paths: str) -> dict[str, bytes]:
    return {p: Path(p).read_bytes() for p in paths if os.path.exists(p)}


def test_a_transient_domain_started_on_the_commit_base_is_refused_then_finished_on_the_top(
    tmp_path: Path, libvirtd: Domains, background: list[Background]
) -> None:
    """The data loss of issue 10. A transient domain is destroyed in the middle of s1's live
    active commit (vda.s1 into the disk); the operator starts it again from a stale definition
    (the one adopt saw), on the commit's base. recover must refuse (exit 3, naming both images)
    and change nothing: vda.s1 holds the only copy of the guest's writes since s1. Started from
    the definition `show --json` gives, it runs on vda.s1 and recover finishes live."""
    vms = libvirtd
    cli, name, base = _setup(tmp_path, vms, persistent=False)
    stale = tmp_path / "stale.xml"
    stale.write_text(vms.domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    s1 = vms.path("vda.s1")
    cli.run("snapshot", name, "s1")  # freezes the disk
    assert disk_sources(cli.json("show", name)["domain_xml"]) == {"vda": s1}
    vms.write(name, 0x22, *BULK)  # into vda.s1: what the commit moves (6 s at 1 MiB/s)
    job = Background(cli, "delete", name, "s1")
    background.append(job)
    _running_job(vms, name, ACTIVE_COMMIT)
    vms.stop(name)  # virsh destroy in the middle of the job: the transient domain is gone
    code, out = job.wait()
    assert code == 4 and "stopped during the block job" in out and "recover" in out, out
    present = content({}, 0x22)
    assert_file_reads(s1, present)
    _virsh("create", str(stale))  # the stale definition: on the disk, the commit's base
    assert _domblklist(name) == [base]
    before = _files(base, s1)
    refused = cli.run("recover", name, expect=3)
    assert base in refused.stderr and s1 in refused.stderr, refused.stderr
    assert "never asked libvirt to pivot" in refused.stderr
    assert _files(base, s1) == before  # nothing changed
    assert cli.json("show", name)["operation"] is not None
    vms.stop(name)
    _virsh("create", str(_recorded_definition(cli, name, tmp_path)))  # what the refusal says
    assert _domblklist(name) == [s1]
    vms.write(name, 0x33, 12 * MIB)  # the guest writes on, into vda.s1
    present = content({12 * MIB: 0x33}, 0x22)
    cli.run("recover", name)  # a new active commit, pivoted
    assert _domblklist(name) == [base] and not os.path.exists(s1)
    assert disk_sources(cli.json("show", name)["domain_xml"]) == {"vda": base}
    assert_running_reads(vms, name, present)
    done = cli.run("verify", name)
    assert done.returncode == 0, done.stdout
    vms.write(name, 0x44, 14 * MIB)
    vms.stop(name)
    assert_file_reads(base, content({12 * MIB: 0x33, 14 * MIB: 0x44}, 0x22))


def test_a_transient_domain_gone_mid_commit_is_finished_offline_and_started_from_the_ledger(
    tmp_path: Path, libvirtd: Domains, background: list[Background]
) -> None:
    """Destroyed mid-commit and not started again: no pivot was asked for, so vda.s1 holds the
    present and is committed again with qemu-img; recover names where the definition is, and
    that definition starts the domain on the disk."""
    vms = libvirtd
    cli, name, base = _setup(tmp_path, vms, persistent=False)
    s1 = vms.path("vda.s1")
    cli.run("snapshot", name, "s1")
    vms.write(name, 0x22, *BULK)
    job = Background(cli, "delete", name, "s1")
    background.append(job)
    _running_job(vms, name, ACTIVE_COMMIT)
    vms.write(name, 0x33, 12 * MIB)  # during the job
    vms.stop(name)
    assert job.wait()[0] == 4
    done = " ".join(cli.run("recover", name).stdout.split())
    assert "is gone (transient" in done and f"vda={base}" in done, done
    assert not os.path.exists(s1)
    present = content({12 * MIB: 0x33}, 0x22)
    assert_file_reads(base, present)
    _virsh("create", str(_recorded_definition(cli, name, tmp_path)))
    assert _domblklist(name) == [base]
    assert_running_reads(vms, name, present)
    assert cli.run("verify", name).returncode == 0


def test_an_offline_delete_under_live_made_chains_leaves_a_domain_that_starts(
    tmp_path: Path, libvirt_vms: Domains
) -> None:
    """Live snapshots make libvirt write explicit <backingStore> chains into the persistent
    definition; an offline delete of a middle snapshot (two disks: commit and rebase) must
    redefine it, or `virsh start` finds the deleted image there."""
    vms = libvirt_vms
    images = {t: make_image(vms.path(f"{t}.qcow2"), 4 * MIB, {0: 0x01 + i})
              for i, t in enumerate(("vda", "vdb"))}
    name = vms.new(images)
    cli = Cli(tmp_path)
    cli.run("adopt", name, "--libvirt")
    cli.run("snapshot", name, "s1")
    vms.write(name, 0x11, 1 * MIB)
    cli.run("snapshot", name, "s2")
    vms.write(name, 0x22, 2 * MIB)
    cli.run("snapshot", name, "s3")
    vms.write(name, 0x33, 3 * MIB)
    vms.stop(name)
    persistent = vms.sources(name, inactive=True)
    s1 = {t: vms.path(f"{t}.s1") for t in images}
    assert vms.path("vda.s1") in persistent["vda"]  # libvirt wrote the chain
    plan = cli.json("delete", name, "s2")
    assert "define-domain" in [s["action"] for s in plan["steps"]]
    assert not os.path.exists(s1["vda"]) or not os.path.exists(vms.path("vda.s2"))
    for chain in vms.sources(name, inactive=True).values():
        assert all(os.path.exists(p) for p in chain), chain
    assert cli.run("verify", name).returncode == 0
    vms.domain(name).create()  # virsh start
    assert_running_reads(vms, name, [(0, 64 * 1024, 0x01), (1 * MIB, 64 * 1024, 0x11),
                                     (2 * MIB, 64 * 1024, 0x22), (3 * MIB, 64 * 1024, 0x33)])
    shown = cli.json("show", name)
    frozen = {s["name"]: s["disks"]["vda"] for s in shown["snapshots"]}
    assert_file_reads(frozen["s1"], [(0, 64 * 1024, 0x01), (1 * MIB, 64 * 1024, 0)])
    assert_file_reads(frozen["s3"], [(1 * MIB, 64 * 1024, 0x11), (2 * MIB, 64 * 1024, 0x22),
                                     (3 * MIB, 64 * 1024, 0)])
    assert cli.run("verify", name).returncode == 0


def _half_done(vms: Domains, name: str, disk: str = "vda") -> bool:
    info = vms.domain(name).blockJobInfo(disk, 0)
    return bool(info) and info["end"] > 0 and info["cur"] * 2 >= info["end"]


@pytest.mark.parametrize("moment", ["start", "middle"])
def test_a_persistent_domain_destroyed_during_a_live_delete_of_two_disks_is_started_again(
    tmp_path: Path, libvirtd: Domains, background: list[Background], moment: str
) -> None:
    """Two disks, s1's live delete (an active commit per disk); the domain is destroyed at the
    start or in the middle of vda's job: delete exits 4, recover finishes with qemu-img and
    starts the domain again on the disks, which read the guest's writes."""
    vms = libvirtd
    images = {t: make_image(vms.path(f"{t}.qcow2"), SIZE, {0: 0x01 + i})
              for i, t in enumerate(("vda", "vdb"))}
    name = vms.new(images)
    cli = Cli(tmp_path)
    cli.run("adopt", name, "--libvirt")
    cli.run("snapshot", name, "s1")
    vms.write(name, 0x22, *BULK)  # vda.s1
    vms.write(name, 0x23, 3 * MIB, device="virtio-disk1")  # vdb.s1
    job = Background(cli, "delete", name, "s1")
    background.append(job)
    _running_job(vms, name, ACTIVE_COMMIT)
    if moment == "middle":
        wait_for("the job to be half done", lambda: _half_done(vms, name))
    vms.stop(name)
    code, out = job.wait()
    assert code == 4 and "recover" in out, out
    done = " ".join(cli.run("recover", name).stdout.split())
    assert f"started again on vda={images['vda']}, vdb={images['vdb']}" in done, done
    assert vms.running(name) and _domblklist(name) == [images["vda"], images["vdb"]]
    present_a = content({}, 0x22)
    present_b = [(0, 64 * 1024, 0x02), (3 * MIB, 64 * 1024, 0x23)]
    assert_running_reads(vms, name, present_a)
    assert cli.run("verify", name).returncode == 0
    vms.write(name, 0x44, 14 * MIB)
    vms.stop(name)
    vms.domain(name).create()  # virsh start: the definition names the disks
    assert _domblklist(name) == [images["vda"], images["vdb"]]
    vms.stop(name)
    assert_file_reads(images["vda"], content({14 * MIB: 0x44}, 0x22))
    qemu_io(images["vdb"], [f"read -P {p:#x} {o} {n}" for o, n, p in present_b], read_only=True)
    assert not any(os.path.exists(vms.path(f"{t}.s1")) for t in images)


def _killed_after_our_pivot(
    tmp_path: Path, vms: Domains, background: list[Background], *, persistent: bool
) -> tuple[Cli, str, str, str, dict]:  # type: ignore[type-arg]
    """s1's live delete pivots onto the disk, and snapledger is killed right after, before
    it records the step; the guest then writes into the disk (the active image now)."""
    cli, name, base = _setup(tmp_path, vms, persistent=persistent)
    s1 = vms.path("vda.s1")
    cli.run("snapshot", name, "s1")
    vms.write(name, 0x22, *BULK)
    cli.env[TEST_PAUSE_AFTER_PIVOT_ENV] = "30"
    job = Background(cli, "delete", name, "s1")
    del cli.env[TEST_PAUSE_AFTER_PIVOT_ENV]
    background.append(job)
    wait_for("the pivot", lambda: _domblklist(name) == [base])
    job.kill()
    op = _operation(cli, name)
    assert op["done"] == 0 and op["failure"] is None
    vms.write(name, 0x55, 2 * MIB)  # into the disk, over 0x22 that vda.s1 still holds
    return cli, name, base, s1, op


def test_killed_after_its_own_pivot_then_a_persistent_domain_is_destroyed(
    tmp_path: Path, libvirtd: Domains, background: list[Background]
) -> None:
    vms = libvirtd
    cli, name, base, s1, op = _killed_after_our_pivot(tmp_path, vms, background, persistent=True)
    vms.stop(name)
    present = content({2 * MIB: 0x55}, 0x22)
    assert_file_reads(base, present)
    done = cli.run("recover", name)  # our pivot was recorded: the commit is done
    assert "started again" in done.stdout
    assert _steps_done(cli, name, op["id"]) == list(range(op["steps"]))
    assert not os.path.exists(s1) and _domblklist(name) == [base]
    assert_running_reads(vms, name, present)  # the guest's writes after the pivot are kept
    assert cli.run("verify", name).returncode == 0


def test_killed_after_its_own_pivot_then_a_transient_domain_is_destroyed(
    tmp_path: Path, libvirtd: Domains, background: list[Background]
) -> None:
    """The one case the ledger can't settle: our pivot was asked for, and the domain is gone.
    recover refuses (exit 3) with both ways to start it; started on the disk, it finishes."""
    vms = libvirtd
    cli, name, base, s1, op = _killed_after_our_pivot(tmp_path, vms, background, persistent=False)
    vms.stop(name)
    before = _files(base, s1)
    refused = cli.run("recover", name, expect=3)
    assert "can't tell whether it did" in refused.stderr
    assert base in refused.stderr and s1 in refused.stderr
    assert _files(base, s1) == before
    definition = _recorded_definition(cli, name, tmp_path)
    definition.write_text(definition.read_text().replace(s1, base))  # as the refusal says
    _virsh("create", str(definition))
    cli.run("recover", name)
    present = content({2 * MIB: 0x55}, 0x22)
    assert not os.path.exists(s1) and _domblklist(name) == [base]
    assert_running_reads(vms, name, present)
    assert cli.run("verify", name).returncode == 0


def test_a_persistent_domain_destroyed_during_a_non_active_live_commit(
    tmp_path: Path, libvirtd: Domains, background: list[Background]
) -> None:
    """s2's live delete commits vda.s2 into vda.s1 under the running vda.s3; the domain is
    destroyed mid-job. recover finishes with qemu-img, redefines the domain (its definition held
    libvirt's chain with vda.s2) and starts it; `virsh start` works afterwards too."""
    vms = libvirtd
    cli, name, base = _setup(tmp_path, vms)
    s1, s2, s3 = (vms.path(f"vda.s{n}") for n in (1, 2, 3))
    cli.run("snapshot", name, "s1")
    vms.write(name, 0x11, 8 * MIB)
    cli.run("snapshot", name, "s2")
    vms.write(name, 0x22, *BULK)  # vda.s2: what the commit moves
    cli.run("snapshot", name, "s3")
    vms.write(name, 0x33, 12 * MIB)
    job = Background(cli, "delete", name, "s2", "--strategy", "commit")
    background.append(job)
    _running_job(vms, name, COMMIT)
    vms.stop(name)
    code, out = job.wait()
    assert code == 4, out
    done = cli.run("recover", name)
    assert "started again" in done.stdout, done.stdout
    assert not os.path.exists(s2)
    present = content({8 * MIB: 0x11, 12 * MIB: 0x33}, 0x22)
    assert vms.sources(name)["vda"] == [s3, s1, base]
    assert_running_reads(vms, name, present)
    shown = cli.json("show", name)
    assert {s["name"]: s["disks"]["vda"] for s in shown["snapshots"]} == {"s1": base, "s3": s1}
    assert_file_reads(base, content({}))
    assert_file_reads(s1, content({8 * MIB: 0x11}, 0x22))
    assert cli.run("verify", name).returncode == 0
    vms.stop(name)
    vms.domain(name).create()
    assert vms.sources(name)["vda"] == [s3, s1, base]
    assert_running_reads(vms, name, present)


def test_block_jobs_not_ours_are_a_conflict_and_nothing_is_recorded(
    tmp_path: Path, libvirt_vms: Domains
) -> None:
    """A hand-started `virsh blockcopy` (and a hand-started `blockpull`) on the disk: snapshot
    and delete exit 4 before recording anything; once the job is cancelled, they work."""
    vms = libvirt_vms
    cli, name, base = _setup(tmp_path, vms, persistent=False)  # blockcopy wants transient
    cli.run("snapshot", name, "s1")
    vms.write(name, 0x22, *BULK)
    events = len(cli.json("log"))
    copy = vms.path("copy.qcow2")
    _virsh("blockcopy", name, "vda", copy, "--bandwidth", "1")  # 1 MiB/s: runs a while
    for args in (("snapshot", name, "s2"), ("delete", name, "s1")):
        busy = cli.run(*args, expect=4)
        assert "blockcopy" not in busy.stderr and "virsh blockjob" in busy.stderr, busy.stderr
        assert "nothing was done" in busy.stderr
    assert len(cli.json("log")) == events and cli.json("show", name)["operation"] is None
    _virsh("blockjob", name, "vda", "--abort")
    wait_for("the copy to be cancelled", lambda: not _job(vms, name))
    cli.run("delete", name, "s1")
    assert_running_reads(vms, name, content({}, 0x22))
    assert cli.run("verify", name).returncode == 0


def test_a_memory_snapshot_request_is_refused(tmp_path: Path, libvirt_vms: Domains) -> None:
    vms = libvirt_vms
    cli, name, base = _setup(tmp_path, vms)
    request = tmp_path / "mem.xml"
    request.write_text("<domainsnapshot><name>m</name>"
                       f"<memory snapshot='external' file='{vms.path('mem')}'/></domainsnapshot>")
    events = len(cli.json("log"))
    refused = cli.run("snapshot", name, "m", "--xml", str(request), expect=2)
    assert "memory" in refused.stderr
    assert len(cli.json("log")) == events and _domblklist(name) == [base]


def test_a_frozen_image_rewritten_by_a_hand_made_commit_is_drift(
    tmp_path: Path, libvirt_vms: Domains
) -> None:
    """`virsh blockcommit --active` then `blockjob --abort` writes into s1's frozen image (same
    size, same inode, new mtime): verify finds it, a delete is refused; the hint names no
    swap-disk, which would be refused."""
    vms = libvirt_vms
    cli, name, base = _setup(tmp_path, vms)
    cli.run("snapshot", name, "s1")
    cli.run("snapshot", name, "s2")  # freezes vda.s1
    s1 = vms.path("vda.s1")
    vms.write(name, 0x22, 0, 64 * 1024)  # into vda.s2 (the base's size does not change)
    stamp = os.stat(base)
    _virsh("blockcommit", name, "vda", "--active", "--wait")  # into the disk, s1's image
    _virsh("blockjob", name, "vda", "--abort")
    wait_for("the job to be gone", lambda: not _job(vms, name))
    seen = os.stat(base)
    assert (seen.st_ino, seen.st_size) == (stamp.st_ino, stamp.st_size)
    assert seen.st_mtime_ns != stamp.st_mtime_ns
    assert_file_reads(base, content({0: 0x22}))  # s1 reads other data now
    found = cli.run("verify", name, expect=3)
    text = " ".join((found.stdout + found.stderr).split())
    assert base in text and "modified" in text, text
    before = _files(base, s1)
    refused = cli.run("delete", name, "s2", expect=3)
    assert "swap-disk" not in refused.stderr and "modified" in refused.stderr
    assert _files(base, s1) == before


def test_a_merge_by_hand_onto_a_frozen_image_gets_a_hint_that_works(
    tmp_path: Path, libvirt_vms: Domains
) -> None:
    """`virsh blockcommit --active --pivot` moves the domain onto s2's frozen image: verify says
    so and offers a way out that works (no swap-disk, which refuses a frozen image)."""
    vms = libvirt_vms
    cli, name, base = _setup(tmp_path, vms)
    cli.run("snapshot", name, "s1")
    cli.run("snapshot", name, "s2")
    s1 = vms.path("vda.s1")
    vms.write(name, 0x22, *BULK)
    _virsh("blockcommit", name, "vda", "--active", "--pivot", "--wait", "--base", s1)
    assert _domblklist(name) == [s1]
    found = cli.run("verify", name, expect=3)
    text = " ".join((found.stdout + found.stderr).split())
    assert "snapshot s2's frozen image" in text and "retire" in text, text
    assert "swap-disk" not in text
    cli.run("retire", name)  # the way out the hint gives
    cli.run("adopt", name, "--libvirt")
    assert cli.run("verify", name).returncode == 0
    cli.run("snapshot", name, "t1")
    assert_running_reads(vms, name, content({}, 0x22))


def test_verify_compares_the_persistent_definition_and_reconcile_redefines_it(
    tmp_path: Path, libvirt_vms: Domains
) -> None:
    """A persistent definition pointed elsewhere by hand while the domain runs on the ledger's
    image: verify finds it (the next boot would use it); reconcile redefines it."""
    vms = libvirt_vms
    cli, name, base = _setup(tmp_path, vms)
    cli.run("snapshot", name, "s1")
    s1 = vms.path("vda.s1")
    vms.write(name, 0x22, 1 * MIB)
    inactive = vms.domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    from snapledger.adapters.libvirt.xml import with_sources

    vms.conn.defineXML(with_sources(inactive, {"vda": base}))  # the next boot: on s1's image
    found = cli.run("verify", name, expect=3)
    text = " ".join((found.stdout + found.stderr).split())
    assert "persistent definition uses" in text and "its next start would not" in text, text
    done = cli.run("reconcile", name)
    assert "redefined" in done.stdout
    assert vms.sources(name, inactive=True)["vda"][0] == s1
    assert cli.run("verify", name).returncode == 0
    vms.stop(name)
    vms.domain(name).create()
    assert _domblklist(name) == [s1]
    assert vms.reads(name, 0x22, 1 * MIB, 64 * 1024)


def test_a_snapshot_deleted_with_virsh_gets_a_hint_that_works(
    tmp_path: Path, libvirt_vms: Domains
) -> None:
    """Snapshots made with virsh and adopted with --keep-libvirt-metadata; `virsh snapshot-delete`
    then merges one behind snapledger's back (libvirt 9.0 does it by a block commit). The
    finding's way out is not a swap-disk (refused on a frozen image); the one it gives works."""
    vms = libvirt_vms
    cli, name, base = _setup(tmp_path, vms)
    cli.run("retire", name)  # adopted again below, with virsh's history
    _virsh("snapshot-create-as", name, "v1", "--disk-only", "--atomic")
    vms.write(name, 0x11, 1 * MIB)
    _virsh("snapshot-create-as", name, "v2", "--disk-only", "--atomic")
    vms.write(name, 0x22, 2 * MIB)
    cli.run("adopt", name, "--libvirt", "--keep-libvirt-metadata")
    assert cli.run("verify", name).returncode == 0
    _virsh("snapshot-delete", name, "v2")  # commits vda.v2 into vda.v1 and pivots
    found = cli.run("verify", name, expect=3)
    text = " ".join((found.stdout + found.stderr).split())
    assert "swap-disk" not in text, text
    for args in (("snapshot", name, "t1"), ("delete", name, "v1")):
        refused = cli.run(*args, expect=3)
        assert "swap-disk" not in refused.stderr, refused.stderr
    assert "retire" in text
    cli.run("retire", name)
    for snap in [s.getName() for s in vms.domain(name).listAllSnapshots()]:
        vms.domain(name).snapshotLookupByName(snap).delete(
            libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    cli.run("adopt", name, "--libvirt")
    assert cli.run("verify", name).returncode == 0
    cli.run("snapshot", name, "t1")
    assert_running_reads(vms, name, [(1 * MIB, 64 * 1024, 0x11), (2 * MIB, 64 * 1024, 0x22)])


def test_the_domain_starts_after_every_kind_of_operation(
    tmp_path: Path, libvirt_vms: Domains
) -> None:
    """After each kind of operation, live and offline (snapshot, revert, delete by active and
    non-active commit and by pull, swap-disk, gc), the domain is destroyed and started again with
    `virsh start`: it runs on the images the ledger says, the definition `show --json` gives
    names them, verify is clean, and the guest's last write is there."""
    vms = libvirt_vms
    cli, name, base = _setup(tmp_path, vms)
    pattern = iter(range(0x40, 0x80))
    last: list[tuple[int, int]] = []

    def guest_writes() -> None:
        value = next(pattern)
        offset = (value - 0x40) * 64 * 1024
        vms.write(name, value, offset)
        last.append((offset, value))

    def starts_again(after: str) -> None:
        vms.stop(name)
        vms.domain(name).create()  # virsh start
        shown = cli.json("show", name)
        active = shown["disks"]["vda"]["active"]
        assert _domblklist(name) == [active], after
        assert disk_sources(shown["domain_xml"]) == {"vda": active}, after
        assert vms.sources(name)["vda"][0] == active
        done = cli.run("verify", name)
        assert done.returncode == 0, (after, done.stdout)
        offset, value = last[-1]
        assert vms.reads(name, value, offset, 64 * 1024), after

    for args in (("snapshot", name, "s1"), ("snapshot", name, "s2"), ("snapshot", name, "s3")):
        guest_writes()
        cli.run(*args)  # live
        starts_again(" ".join(args))
    guest_writes()
    cli.run("delete", name, "s3", "--strategy", "commit")  # live active commit and pivot
    starts_again("live active commit")
    guest_writes()
    cli.run("snapshot", name, "s4")
    cli.run("delete", name, "s2", "--strategy", "commit")  # live non-active commit
    starts_again("live non-active commit")
    guest_writes()
    cli.run("delete", name, "s4", "--strategy", "pull")  # live pull into the active image
    starts_again("live pull")
    guest_writes()
    vms.stop(name)
    cli.run("snapshot", name, "s5")  # offline
    vms.domain(name).create()
    guest_writes()
    starts_again("offline snapshot")
    cli.run("snapshot", name, "s6")
    guest_writes()
    vms.stop(name)
    cli.run("delete", name, "s5")  # offline, under the active image
    vms.domain(name).create()
    starts_again("offline delete")
    cli.run("revert", name, "s6", "--running")
    last.append(last[-2])  # s6 holds what was written before it
    starts_again("revert --running")
    vms.stop(name)
    cli.run("revert", name, "s1")  # offline; the abandoned present is deleted
    vms.domain(name).create()
    last.append(last[0])
    starts_again("offline revert")
    vms.stop(name)
    mine = vms.path("mine.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", cli.json("show", name)
                    ["disks"]["vda"]["active"], "-F", "qcow2", mine], check=True)
    cli.run("swap-disk", name, "vda", mine)  # offline: the domain is redefined on it
    vms.domain(name).create()
    starts_again("swap-disk")
    cli.run("gc", name, "--include-detached")
    starts_again("gc")
