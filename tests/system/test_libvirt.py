"""snapledger against a real libvirtd and QEMU (TCG): tiny OS-less domains, guest writes by HMP
qemu-io, content checked with `qemu-io -r -U` on frozen images (tests/libvirt_helpers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import libvirt_helpers
from cli_helpers import Cli
from libvirt_helpers import Domains
from qemu_helpers import CLUSTER, assert_reads, make_image

MIB = 1 << 20
libvirt_vms = libvirt_helpers.libvirt_vms  # the fixture


def _setup(tmp_path: Path, vms: Domains, *, persistent: bool = True, disks: int = 1,
           start: bool = True, extra: str = "") -> tuple[Cli, str, dict[str, str]]:
    images = {}
    for i in range(disks):
        target = f"vd{'abcd'[i]}"
        images[target] = make_image(vms.path(f"{target}.qcow2"), 4 * MIB, {0: 0x01 + i})
    name = vms.new(images, persistent=persistent, start=start, extra=extra)
    return Cli(tmp_path), name, images


def _adopted(tmp_path: Path, vms: Domains) -> tuple[Cli, str, dict[str, str]]:
    """A running domain of one disk, adopted with `adopt --libvirt`."""
    cli, name, images = _setup(tmp_path, vms)
    cli.run("adopt", name, "--libvirt")
    return cli, name, images


def _show(cli: Cli, vm: str) -> dict:  # type: ignore[type-arg]
    return cli.json("show", vm)  # type: ignore[no-any-return]


def test_a_guest_write_lands_in_the_running_disk(tmp_path: Path, libvirt_vms: Domains) -> None:
    _, name, images = _setup(tmp_path, libvirt_vms)
    libvirt_vms.write(name, 0x5A, 0)
    assert_reads(images["vda"], {0: 0x5A}, 2)
    assert libvirt_vms.sources(name)["vda"] == [images["vda"]]


def test_adopt_reads_disks_and_leaves_other_kinds_alone(tmp_path: Path, libvirt_vms: Domains) -> None:
    raw = libvirt_vms.path("data.raw")
    make_image(raw, 1 * MIB, fmt="raw")
    extra = (
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='{raw}'/><target dev='vdc' bus='virtio'/></disk>"
        "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>"
    )
    cli, name, images = _setup(tmp_path, libvirt_vms, disks=2, extra=extra)
    out = cli.json("adopt", name, "--libvirt")
    assert out["disks"]["vda"]["active"] == images["vda"]
    assert out["disks"]["vdb"]["active"] == images["vdb"]
    assert "vdc" not in out["disks"]
    assert any(line.startswith("vdc") and "raw" in line for line in out["left_alone"])
    assert any(line.startswith("hdc") and "not a disk" in line for line in out["left_alone"])
    assert "<domain" in out["domain_xml"]
    assert cli.run("verify", name).returncode == 0
    # unknown domain: bad input, one line
    cli.run("adopt", "no-such-domain-here", "--libvirt", expect=2)


def test_live_snapshot_switches_the_running_domain_atomically(tmp_path: Path, libvirt_vms: Domains) -> None:
    cli, name, images = _setup(tmp_path, libvirt_vms, disks=2)
    cli.run("adopt", name, "--libvirt")
    libvirt_vms.write(name, 0x11, CLUSTER)
    plan = cli.json("snapshot", name, "s1")
    assert [s["action"] for s in plan["steps"]] == [
        "create-overlay", "create-overlay", "switch-disks", "set-active", "set-active"
    ]
    s1 = {t: str(Path(p).with_suffix(".s1")) for t, p in images.items()}
    assert {t: c[0] for t, c in libvirt_vms.sources(name).items()} == s1
    assert libvirt_vms.sources(name)["vda"] == [s1["vda"], images["vda"]]
    assert libvirt_vms.domain(name).snapshotNum() == 0  # no libvirt metadata
    shown = _show(cli, name)
    assert shown["disks"]["vda"]["active"] == s1["vda"]
    # the snapshot recorded the domain XML of that moment
    log = cli.json("log", name, "--type", "SnapshotTaken")
    assert len(log) == 1
    libvirt_vms.write(name, 0x22, 0)  # after the snapshot: lands in the overlay
    assert_reads(images["vda"], {0: 0x01, 1: 0x11}, 2)  # the frozen image keeps s1's state
    assert_reads(s1["vda"], {0: 0x22, 1: 0x11}, 2)
    assert cli.run("verify", name).returncode == 0
    # the persistent definition follows
    assert libvirt_vms.sources(name, inactive=True)["vda"][0] == s1["vda"]


def test_snapshot_xml_of_a_shut_off_domain_redefines_it(tmp_path: Path, libvirt_vms: Domains) -> None:
    cli, name, images = _setup(tmp_path, libvirt_vms, disks=2, start=False)
    cli.run("adopt", name, "--libvirt")
    overlay = libvirt_vms.path("vda.mine")
    request = Path(tmp_path, "snap.xml")
    request.write_text(
        "<domainsnapshot><name>s1</name><description>before</description><disks>"
        f"<disk name='vda' snapshot='external'><source file='{overlay}'/></disk>"
        "<disk name='vdb' snapshot='no'/></disks></domainsnapshot>"
    )
    plan = cli.json("snapshot", name, "s1", "--xml", str(request))
    assert [s["action"] for s in plan["steps"]] == ["create-overlay", "set-active", "define-domain"]
    assert libvirt_vms.sources(name, inactive=True)["vda"][0] == overlay
    assert libvirt_vms.sources(name, inactive=True)["vdb"][0] == images["vdb"]
    shown = _show(cli, name)
    assert shown["snapshots"][0]["disks"] == {"vda": images["vda"]}
    assert shown["snapshots"][0]["description"] == "before"
    libvirt_vms.domain(name).create()
    libvirt_vms.write(name, 0x33, 0)
    assert_reads(images["vda"], {0: 0x01}, 1)
    assert cli.run("verify", name).returncode == 0


def _json_lines(text: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _exists(path: str) -> bool:
    return os.path.exists(path)


def test_revert_running_domain_stops_redefines_and_starts_it(tmp_path: Path, libvirt_vms: Domains) -> None:
    cli, name, images = _adopted(tmp_path, libvirt_vms)
    libvirt_vms.write(name, 0x11, 0)
    cli.run("snapshot", name, "s1")
    s1 = libvirt_vms.path("vda.s1")
    libvirt_vms.write(name, 0x22, 0)
    plan = cli.json("revert", name, "s1", "--running")
    actions = [s["action"] for s in plan["steps"]]
    assert actions[0] == "stop-domain" and "define-domain" in actions
    assert actions.index("define-domain") < actions.index("delete-file")
    assert any("is running" in n for n in plan["notes"])
    reverted = libvirt_vms.path("vda.s1-1")
    assert libvirt_vms.running(name)
    assert libvirt_vms.sources(name)["vda"] == [reverted, images["vda"]]
    assert not os.path.exists(s1)  # the abandoned present, a snapshot-less managed overlay
    assert _show(cli, name)["current"] == "s1"
    libvirt_vms.write(name, 0x33, CLUSTER)
    assert_reads(images["vda"], {0: 0x11}, 2)  # s1's state, untouched
    assert cli.run("verify", name).returncode == 0
    # without --running the domain stays shut off, defined on the next overlay
    cli.run("revert", name, "s1")
    assert not libvirt_vms.running(name)
    assert libvirt_vms.sources(name, inactive=True)["vda"][0] == libvirt_vms.path("vda.s1-2")
    assert cli.run("verify", name).returncode == 0


DIES_AFTER_THE_REDEFINITION = """
import os, sys
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.libvirt.domains import LibvirtDomains
from snapledger.adapters.libvirt.hypervisor import LibvirtHypervisor
from snapledger.adapters.storage.qemu_img import QemuImgStorage
from snapledger.adapters.compose import ledger_service

class DiesAfterTheRedefinition(LibvirtDomains):
    def define(self, xml):
        super().define(xml)
        os._exit(9)  # killed right after libvirt redefined the domain

store, name = sys.argv[1:]
ledger_service(LedgerApplication(store), QemuImgStorage(),
           hypervisor=LibvirtHypervisor(DiesAfterTheRedefinition)).revert(name, "s1", running=True)
"""


def test_a_revert_running_cut_short_is_finished_and_started_by_recover(
    tmp_path: Path, libvirt_vms: Domains
) -> None:
    """The process dies with the domain stopped and redefined on the new overlay: `recover`
    deletes the abandoned present and starts the domain, as `--running` asked."""
    cli, name, images = _adopted(tmp_path, libvirt_vms)
    libvirt_vms.write(name, 0x11, 0)
    cli.run("snapshot", name, "s1")
    libvirt_vms.write(name, 0x22, 0)
    died = subprocess.run(
        [sys.executable, "-c", DIES_AFTER_THE_REDEFINITION, cli.env["SNAPLEDGER_STORE"], name],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert died.returncode == 9, died.stderr
    assert not libvirt_vms.running(name)
    assert "domain " + name + " is running" in cli.run("recover").stdout
    reverted = libvirt_vms.path("vda.s1-1")
    assert libvirt_vms.running(name)
    assert libvirt_vms.sources(name)["vda"] == [reverted, images["vda"]]
    assert not os.path.exists(libvirt_vms.path("vda.s1"))
    libvirt_vms.write(name, 0x33, CLUSTER)
    assert_reads(images["vda"], {0: 0x11}, 2)  # s1's state, untouched
    assert cli.run("verify", name).returncode == 0


def test_revert_of_a_transient_domain_needs_running(tmp_path: Path, libvirt_vms: Domains) -> None:
    cli, name, images = _setup(tmp_path, libvirt_vms, persistent=False)
    cli.run("adopt", name, "--libvirt")
    cli.run("snapshot", name, "s1")
    before = cli.state()
    cli.run("revert", name, "s1", expect=2)
    assert cli.state()[1] == before[1]
    cli.run("revert", name, "s1", "--running")
    assert libvirt_vms.running(name)
    assert libvirt_vms.sources(name)["vda"] == [libvirt_vms.path("vda.s1-1"), images["vda"]]
    assert cli.run("verify", name).returncode == 0


def test_live_delete_active_commit_with_pivot(tmp_path: Path, libvirt_vms: Domains) -> None:
    cli, name, images = _adopted(tmp_path, libvirt_vms)
    cli.run("snapshot", name, "s1")
    s1 = libvirt_vms.path("vda.s1")
    libvirt_vms.write(name, 0x22, CLUSTER)
    plan = cli.json("delete", name, "s1")  # F (the adopted disk) may be written, C is active
    assert plan["steps"][0] == {**plan["steps"][0], "action": "commit", "top": s1, "base": images["vda"]}
    assert libvirt_vms.running(name)
    assert libvirt_vms.sources(name)["vda"] == [images["vda"]]  # pivoted
    assert not os.path.exists(s1)
    libvirt_vms.write(name, 0x33, 2 * CLUSTER)  # the guest writes on, into the base now
    libvirt_vms.stop(name)
    assert_reads(images["vda"], {0: 0x01, 1: 0x22, 2: 0x33}, 3)
    assert _show(cli, name)["disks"]["vda"]["chain"] == [images["vda"]]
    assert cli.run("verify", name).returncode == 0


def test_live_delete_of_middle_snapshots_non_active_commit_and_pull(tmp_path: Path, libvirt_vms: Domains) -> None:
    cli, name, images = _adopted(tmp_path, libvirt_vms)
    expected = {0: 0x01}
    for i, snap in enumerate(("s1", "s2", "s3", "s4"), start=1):
        cli.run("snapshot", name, snap)
        libvirt_vms.write(name, 0x10 * i, i * CLUSTER)
        expected[i] = 0x10 * i
    vda = {s: libvirt_vms.path(f"vda.{s}") for s in ("s1", "s2", "s3", "s4")}
    # chain: vda.qcow2 (s1) <- vda.s1 (s2) <- vda.s2 (s3) <- vda.s3 (s4) <- vda.s4 (active)
    # s3 in the middle: a pull into vda.s3 can't be done live, so auto commits vda.s3 into vda.s2
    plan = cli.json("delete", name, "s3")
    assert [s["action"] for s in plan["steps"]][:2] == ["commit", "rebase-unsafe"]
    assert plan["steps"][0]["top"] == vda["s3"] and plan["steps"][0]["base"] == vda["s2"]
    assert libvirt_vms.sources(name)["vda"] == [vda["s4"], vda["s2"], vda["s1"], images["vda"]]
    assert not os.path.exists(vda["s3"])
    # forced pull into the middle: refused before anything is done
    before = cli.state()
    cli.run("delete", name, "s2", "--strategy", "pull", expect=3)
    assert cli.state()[1] == before[1]
    # s4's frozen image is now vda.s2 (it took over vda.s3's content); its child is the active image:
    # pull vda.s2 into the active image with a block pull
    plan = cli.json("delete", name, "s4", "--strategy", "pull")
    assert plan["steps"][0]["action"] == "pull" and plan["steps"][0]["image"] == vda["s4"]
    assert libvirt_vms.sources(name)["vda"] == [vda["s4"], vda["s1"], images["vda"]]
    assert not os.path.exists(vda["s2"])
    assert_reads(vda["s1"], {0: 0x01, 1: 0x10}, 5)  # s3's state (as s2 left it), unchanged
    assert_reads(images["vda"], {0: 0x01}, 5)  # s1's state
    libvirt_vms.write(name, 0x77, 5 * CLUSTER)
    libvirt_vms.stop(name)
    assert_reads(vda["s4"], {**expected, 5: 0x77}, 6)
    assert cli.run("verify", name).returncode == 0


def test_branch_point_delete_with_branches_pull_while_running(tmp_path: Path, libvirt_vms: Domains) -> None:
    cli, name, images = _adopted(tmp_path, libvirt_vms)
    cli.run("snapshot", name, "s1")
    libvirt_vms.write(name, 0x11, CLUSTER)
    cli.run("snapshot", name, "s2")  # frozen vda.s1
    libvirt_vms.write(name, 0x22, 2 * CLUSTER)
    cli.run("snapshot", name, "s3")  # frozen vda.s2
    cli.run("revert", name, "s2", "--running")  # vda.s1 now has two children: vda.s2, vda.s2-1
    branch = libvirt_vms.path("vda.s2-1")
    assert libvirt_vms.sources(name)["vda"] == [branch, libvirt_vms.path("vda.s1"), images["vda"]]
    libvirt_vms.write(name, 0x33, 3 * CLUSTER)
    cli.run("delete", name, "s2", expect=3)  # a branch point: refused by default
    plan = cli.json("delete", name, "s2", "--branches", "pull")
    pulls = [s["image"] for s in plan["steps"] if s["action"] == "pull"]
    assert sorted(pulls) == sorted([branch, libvirt_vms.path("vda.s2")])
    assert libvirt_vms.running(name)
    assert libvirt_vms.sources(name)["vda"] == [branch, images["vda"]]
    assert not os.path.exists(libvirt_vms.path("vda.s1"))
    assert_reads(libvirt_vms.path("vda.s2"), {0: 0x01, 1: 0x11, 2: 0x22}, 4)  # s3's state
    libvirt_vms.stop(name)
    assert_reads(branch, {0: 0x01, 1: 0x11, 3: 0x33}, 4)
    assert cli.run("verify", name).returncode == 0


def test_a_disk_changed_with_virsh_is_drift_until_recorded_with_swap_disk(tmp_path: Path, libvirt_vms: Domains) -> None:
    cli, name, images = _setup(tmp_path, libvirt_vms, start=False)
    cli.run("adopt", name, "--libvirt")
    cli.run("snapshot", name, "s1")
    other = make_image(libvirt_vms.path("other.qcow2"), 4 * MIB, {0: 0x44})
    xml = libvirt_vms.domain(name).XMLDesc(2).replace(libvirt_vms.path("vda.s1"), other)
    libvirt_vms.conn.defineXML(xml)  # what `virsh edit` does
    done = cli.run("verify", name, expect=3)
    assert "swap-disk" in done.stdout and other in done.stdout
    cli.run("snapshot", name, "s2", expect=3)  # every destructive operation checks it too
    cli.run("swap-disk", name, "vda", other)
    assert cli.run("verify", name).returncode == 0
    # swap-disk of a shut-off domain changes libvirt's definition itself
    mine = make_image(libvirt_vms.path("mine.qcow2"), 4 * MIB)
    cli.run("swap-disk", name, "vda", mine)
    assert libvirt_vms.sources(name, inactive=True)["vda"][0] == mine
    # a running domain's disk is not swapped behind QEMU's back
    libvirt_vms.domain(name).create()
    cli.run("swap-disk", name, "vda", other, expect=2)
    assert cli.run("verify", name).returncode == 0


def test_adopt_virsh_made_snapshots_then_delete_one(tmp_path: Path, libvirt_vms: Domains) -> None:
    from libvirt_helpers import _virsh

    cli, name, images = _setup(tmp_path, libvirt_vms)
    _virsh("snapshot-create-as", name, "s1", "--disk-only", "--atomic", "--description", "first")
    libvirt_vms.write(name, 0x11, CLUSTER)
    _virsh("snapshot-create-as", name, "s2", "--disk-only", "--atomic")
    libvirt_vms.write(name, 0x22, 2 * CLUSTER)
    vda = {s: libvirt_vms.path(f"vda.{s}") for s in ("s1", "s2")}
    assert libvirt_vms.sources(name)["vda"] == [vda["s2"], vda["s1"], images["vda"]]
    # what libvirt 9.0 refuses
    assert "not supported" in _virsh_error("snapshot-revert", name, "s1")
    out = cli.json("adopt", name, "--libvirt", "--keep-libvirt-metadata")
    assert out["imported"] == ["s1", "s2"]
    assert out["current"] == "s2"
    snaps = {s["name"]: s for s in out["snapshots"]}
    assert snaps["s1"]["disks"] == {"vda": images["vda"]} and snaps["s1"]["parent"] is None
    assert snaps["s2"]["disks"] == {"vda": vda["s1"]} and snaps["s2"]["parent"] == "s1"
    assert snaps["s1"]["description"] == "first"
    assert cli.run("verify", name).returncode == 0
    # delete s1 live: vda.s1 (virsh's overlay, now managed) is committed into the disk
    plan = cli.json("delete", name, "s1")
    assert plan["steps"][0]["action"] == "commit" and plan["steps"][0]["top"] == vda["s1"]
    assert any("metadata of snapshot s1 was removed" in n for n in plan["notes"])
    assert libvirt_vms.sources(name)["vda"] == [vda["s2"], images["vda"]]
    assert not os.path.exists(vda["s1"])
    assert [s.getName() for s in libvirt_vms.domain(name).listAllSnapshots()] == ["s2"]
    assert_reads(images["vda"], {0: 0x01, 1: 0x11}, 3)  # s2's state now lives in the disk
    # and revert, which virsh refuses
    cli.run("revert", name, "s2", "--running")
    assert libvirt_vms.sources(name)["vda"] == [libvirt_vms.path("vda.s2-1"), images["vda"]]
    assert cli.run("verify", name).returncode == 0


def _virsh_error(*args: str) -> str:
    import subprocess

    done = subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0, done.stdout
    return done.stderr


def test_a_failed_block_job_deletes_nothing_then_recover_finishes(tmp_path: Path, libvirt_vms: Domains) -> None:
    cli, name, images = _adopted(tmp_path, libvirt_vms)
    cli.run("snapshot", name, "s1")
    s1 = libvirt_vms.path("vda.s1")
    libvirt_vms.write(name, 0x22, CLUSTER)
    os.chmod(images["vda"], 0o444)  # QEMU (not root) can't reopen the base for writing
    done = cli.run("delete", name, "s1", expect=1)
    assert "blockCommit" in done.stderr or "block commit" in done.stderr
    shown = _show(cli, name)
    assert shown["operation"]["failure"] is not None
    assert os.path.exists(s1) and libvirt_vms.sources(name)["vda"] == [s1, images["vda"]]
    cli.run("snapshot", name, "s2", expect=4)  # the failed operation holds the VM
    os.chmod(images["vda"], 0o644)
    cli.run("recover", name)
    assert libvirt_vms.sources(name)["vda"] == [images["vda"]]
    assert not os.path.exists(s1)
    libvirt_vms.stop(name)
    assert_reads(images["vda"], {0: 0x01, 1: 0x22}, 2)
    assert cli.run("verify", name).returncode == 0
