"""The command line end to end on real qcow2 files, checked byte by byte with qemu-io."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from cli_helpers import Cli
from qemu_helpers import CLUSTER, assert_reads, make_image, write_clusters

CLUSTERS = 16
SIZE = CLUSTERS * CLUSTER


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def rfc_story(cli: Cli) -> dict[str, dict[int, int]]:
    """The RFC's second diagram on real files; returns what each snapshot and the present read."""
    base = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10, 1: 0x10})
    cli.run("adopt", "vm", "--disk", f"vda={base}")
    expected: dict[str, dict[int, int]] = {}
    content = {0: 0x10, 1: 0x10}
    for n, name in enumerate(["snap1", "snap2", "snap3"], start=2):
        cli.run("snapshot", "vm", name)
        expected[name] = dict(content)
        active = cli.json("show", "vm")["disks"]["vda"]["active"]
        write_clusters(active, {n: 0x20 + n})
        content[n] = 0x20 + n
    cli.run("revert", "vm", "snap1")
    content = dict(expected["snap1"])
    write_clusters(cli.path("base.snap1-1"), {9: 0x99})
    content[9] = 0x99
    expected["<present>"] = content
    return expected


def check_bytes(cli: Cli, expected: dict[str, dict[int, int]]) -> None:
    state = cli.json("show", "vm")
    names = {s["name"] for s in state["snapshots"]}
    assert names == set(expected) - {"<present>"}
    for snap in state["snapshots"]:
        assert_reads(snap["disks"]["vda"], expected[snap["name"]], CLUSTERS)
    assert_reads(state["disks"]["vda"]["active"], expected["<present>"], CLUSTERS)


def test_the_rfc_story_keeps_every_byte(cli: Cli) -> None:
    expected = rfc_story(cli)
    check_bytes(cli, expected)
    assert cli.json("show", "vm")["current"] == "snap1"

    plan = cli.json("delete", "vm", "snap1")  # base.qcow2 is the user's disk: stays as shared base
    assert plan["steps"] == [] and plan["bytes_moved"] == 0
    del expected["snap1"]
    check_bytes(cli, expected)

    cli.run("delete", "vm", "snap3")
    assert not Path(cli.path("base.snap2")).exists()
    del expected["snap3"]
    check_bytes(cli, expected)

    plan = cli.json("delete", "vm", "snap2")
    assert [s["action"] for s in plan["steps"]] == ["delete-file"]  # snap3 is gone: base.snap1 unneeded
    del expected["snap2"]
    check_bytes(cli, expected)
    assert {p.name for p in cli.dir.iterdir()} == {"ledger.sqlite", "base.qcow2", "base.snap1-1"}
    cli.run("verify")


def test_delete_merges_a_middle_snapshot_and_says_how_many_bytes(cli: Cli) -> None:
    expected = rfc_story(cli)
    dry = cli.json("delete", "vm", "snap2", "--dry-run")
    assert {"steps", "bytes_moved"} <= set(dry)
    assert all({"action", "bytes"} <= set(step) for step in dry["steps"])
    assert dry["steps"][0]["action"] in ("commit", "pull")
    done = cli.json("delete", "vm", "snap2")
    assert done["steps"] == dry["steps"]
    del expected["snap2"]
    check_bytes(cli, expected)
    cli.run("verify")


def test_json_contract_of_show_log_and_tree(cli: Cli) -> None:
    rfc_story(cli)
    show = cli.json("show", "vm")
    assert {"vm", "current", "disks", "snapshots"} <= set(show)
    assert show["disks"]["vda"]["chain"][0] == show["disks"]["vda"]["active"]
    assert show["disks"]["vda"]["chain"][-1] == cli.path("base.qcow2")
    assert all({"name", "parent", "created", "disks"} <= set(s) for s in show["snapshots"])
    assert json.loads(cli.run("--json", "show", "vm").stdout) == show  # --json before the command too
    log = cli.json("log")
    assert all({"position", "time", "vm", "type", "actor", "host"} <= set(e) for e in log)
    assert [e["position"] for e in log] == sorted(e["position"] for e in log)
    assert cli.json("log", "vm")[0]["type"] == "VirtualMachine.Adopted"
    tree = cli.json("tree", "vm")
    assert tree["current"] == "snap1" and tree["branches"] == [["snap1", "snap2", "snap3"]]
    assert "snap1  *current" in cli.run("tree", "vm").stdout
    images = cli.json("tree", "vm", "--images")["images"]
    assert images[cli.path("base.qcow2")]["owner"] == "adopted"
    assert images[cli.path("base.snap1-1")]["active_for"] == ["vda"]
    assert [vm["vm"] for vm in cli.json("list")] == ["vm"]


def test_a_snapshot_without_a_name_gets_the_utc_time(cli: Cli) -> None:
    base = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10})
    cli.run("adopt", "vm", "--disk", f"vda={base}")
    said = cli.run("snapshot", "vm")
    name = cli.json("show", "vm")["current"]
    assert len(name) == 15 and name[8] == "-" and name.replace("-", "").isdigit()
    assert name in said.stdout
    again = cli.run("snapshot", "vm")  # in the same second, or the next: a new name either way
    assert len({s["name"] for s in cli.json("show", "vm")["snapshots"]}) == 2, again.stdout


def test_prune_keeps_the_newest_and_every_kept_snapshot_reads_as_before(cli: Cli) -> None:
    base = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10})
    cli.run("adopt", "vm", "--disk", f"vda={base}")
    content = {0: 0x10}
    expected: dict[str, dict[int, int]] = {}
    for n in range(1, 6):
        write_clusters(cli.json("show", "vm")["disks"]["vda"]["active"], {n: 0x20 + n})
        content[n] = 0x20 + n
        cli.run("snapshot", "vm", f"s{n}")
        expected[f"s{n}"] = dict(content)
    refused = cli.run("prune", "vm", expect=2)
    assert "at least one keep rule" in refused.stderr
    before = cli.state()
    dry = cli.json("prune", "vm", "--keep-last", "2", "--dry-run")
    assert cli.state() == before and dry["deleted"] == ["s1", "s2", "s3"] and not dry["done"]
    assert dry["kept_because"] == {"s4": ["last"], "s5": ["last", "current"]}
    done = cli.json("prune", "vm", "--keep-last", "2")
    assert done["deleted"] == ["s1", "s2", "s3"] and done["bytes_moved"] == dry["bytes_moved"] > 0
    state = cli.json("show", "vm")
    assert [s["name"] for s in state["snapshots"]] == ["s4", "s5"]
    for snap in state["snapshots"]:
        assert_reads(snap["disks"]["vda"], expected[snap["name"]], CLUSTERS)
    assert_reads(state["disks"]["vda"]["active"], content, CLUSTERS)
    cli.run("verify")


def test_dry_runs_change_no_file_and_record_nothing(cli: Cli) -> None:
    rfc_story(cli)
    cli.run("snapshot", "vm", "snap4")
    before = cli.state()
    cli.run("delete", "vm", "snap2", "--dry-run")
    cli.run("delete", "vm", "snap1", "--branches", "pull", "--dry-run")
    cli.run("revert", "vm", "snap3", "--dry-run")
    cli.run("snapshot", "vm", "snap5", "--dry-run")
    cli.run("gc", "--dry-run", "--include-detached")
    assert cli.state() == before


def test_a_managed_branch_point_is_refused_then_pulled_into_both_branches(cli: Cli) -> None:
    base = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10})
    cli.run("adopt", "vm", "--disk", f"vda={base}")
    cli.run("snapshot", "vm", "s0")
    write_clusters(cli.path("base.s0"), {1: 0x21})
    cli.run("snapshot", "vm", "s1")  # freezes base.s0: a managed overlay
    write_clusters(cli.path("base.s1"), {2: 0x22})
    cli.run("snapshot", "vm", "s2")
    cli.run("revert", "vm", "s1")
    write_clusters(cli.path("base.s1-1"), {3: 0x23})
    expected = {
        "s0": {0: 0x10},
        "s1": {0: 0x10, 1: 0x21},
        "s2": {0: 0x10, 1: 0x21, 2: 0x22},
        "<present>": {0: 0x10, 1: 0x21, 3: 0x23},
    }
    before = cli.state()
    refused = cli.run("delete", "vm", "s1", expect=3)
    assert "--branches pull" in refused.stderr and "--branches keep" in refused.stderr
    assert cli.state() == before
    plan = cli.json("delete", "vm", "s1", "--branches", "pull")
    assert [s["action"] for s in plan["steps"]] == ["pull", "pull", "delete-file"]
    assert not Path(cli.path("base.s0")).exists()
    del expected["s1"]
    check_bytes(cli, expected)
    cli.run("verify")


def test_revert_takes_the_rfc_xml(cli: Cli) -> None:
    rfc_story(cli)
    xml = cli.dir / "revert.xml"
    overlay = cli.path("chosen.qcow2")
    xml.write_text(
        "<domainsnapshotrevert><disks><disk name='vda'>"
        f"<source file='{overlay}'/></disk></disks></domainsnapshotrevert>"
    )
    cli.run("revert", "vm", "snap2", "--xml", str(xml))
    assert cli.json("show", "vm")["disks"]["vda"]["active"] == overlay
    assert_reads(overlay, {0: 0x10, 1: 0x10, 2: 0x22}, CLUSTERS)


def bad_inputs(cli: Cli) -> list[tuple[str, ...]]:
    doctype = cli.dir / "doctype.xml"
    doctype.write_text(
        '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        "<domainsnapshotrevert><disks><disk name='vda'><source file='&e;'/></disk></disks>"
        "</domainsnapshotrevert>"
    )
    wrong_root = cli.dir / "wrong.xml"
    wrong_root.write_text("<domain/>")
    return [
        ("adopt", "bad name", "--disk", f"vda={cli.path('x.qcow2')}"),
        ("adopt", "vm2", "--disk", "vda=relative.qcow2"),
        ("adopt", "vm2", "--disk", "vda"),
        ("adopt", "vm2"),
        ("adopt", "vm", "--disk", f"vda={cli.path('base.qcow2')}"),
        ("snapshot", "nope", "s9"),
        ("snapshot", "vm", ".hidden"),
        ("snapshot", "vm", "snap2"),
        ("snapshot", "vm", "s9", "--overlay", "vda=relative"),
        ("snapshot", "vm", "s9", "--overlay", f"vda={cli.path('base.qcow2')}"),
        ("snapshot", "vm", "s9", "--overlay", "vda=/etc/elsewhere.qcow2"),
        ("snapshot", "vm", "s9", "--overlay", f"vdz={cli.path('new.qcow2')}"),
        ("snapshot", "vm", "s9", "--exclude", "vda"),
        ("revert", "vm", "nope"),
        ("revert", "vm", "snap2", "--xml", str(doctype)),
        ("revert", "vm", "snap2", "--xml", str(wrong_root)),
        ("revert", "vm", "snap2", "--xml", cli.path("missing.xml")),
        ("delete", "vm", "nope"),
        ("delete", "vm", "snap2", "--strategy", "sideways"),
        ("swap-disk", "vm", "vdz", cli.path("base.qcow2")),
        ("swap-disk", "vm", "vda", cli.path("missing.qcow2")),
        ("show", "nope"),
        ("bogus-command",),
    ]


def test_bad_input_gets_one_line_exit_2_and_changes_nothing(cli: Cli) -> None:
    rfc_story(cli)
    requests = bad_inputs(cli)
    before = cli.state()
    for args in requests:
        done = cli.run(*args, expect=2)
        assert "Traceback" not in done.stderr
    assert cli.state() == before


def test_drift_refuses_and_verify_reports_it(cli: Cli) -> None:
    rfc_story(cli)
    # the user replaces snap2's frozen image behind our back: same bytes, another file
    frozen = cli.path("base.snap1")
    copy = cli.path("copy.tmp")
    subprocess.run(["cp", "--preserve=all", frozen, copy], check=True)
    os.replace(copy, frozen)
    before = cli.state()
    done = cli.run("delete", "vm", "snap2", expect=3)
    assert "inode" in done.stderr
    files_after = cli.state()[1]
    assert files_after == before[1]  # nothing on disk changed; the drift itself is recorded
    recorded = [e["type"].rpartition(".")[2] for e in cli.json("log")[-2:]]
    assert recorded == ["DriftDetected", "OperationRefused"]  # why, and the attempt itself
    cli.run("verify", expect=3)
