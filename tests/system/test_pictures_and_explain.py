"""`explain`, `tree` and `export --format dot` through the command on real qcow2 images.

Routes `explain` offers are run with the command itself, and every snapshot is read back with
qemu-io afterwards. DOT output is read by Graphviz (`dot`, installed by .ci/setup).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cli_helpers import CLI, Cli
from qemu_helpers import CLUSTER, assert_reads, make_image, write_clusters

CLUSTERS = 16
SIZE = CLUSTERS * CLUSTER

EXPLAIN_KEYS = {
    "vm", "path", "owner", "origin", "owner_reason", "read_only_because", "state", "vms", "backing",
    "chain", "children", "needs", "frozen_by", "resting_on_it", "branches", "may_write",
    "write_reasons", "may_delete", "delete_reason", "freed_by", "nothing_frees_it",
}


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def rfc_story(cli: Cli) -> dict[str, dict[int, int]]:
    """The RFC's second diagram: base.qcow2 <- base.snap1 <- base.snap2 (snap3's image), and the
    alternate history base.snap1-1. base.snap1 holds more than base.snap2."""
    base = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10})
    cli.run("adopt", "vm", "--disk", f"vda={base}")
    content = {0: 0x10}
    expected: dict[str, dict[int, int]] = {}
    writes = {"snap1": {c: 0x21 for c in range(2, 8)}, "snap2": {8: 0x22}, "snap3": {9: 0x23}}
    for name, clusters in writes.items():
        cli.run("snapshot", "vm", name)
        expected[name] = dict(content)
        write_clusters(cli.path(f"base.{name}"), clusters)
        content.update(clusters)
    cli.run("revert", "vm", "snap1")
    write_clusters(cli.path("base.snap1-1"), {12: 0x5A})
    expected["<present>"] = {**expected["snap1"], 12: 0x5A}
    return expected


def check_bytes(cli: Cli, expected: dict[str, dict[int, int]]) -> None:
    state = cli.json("show", "vm")
    assert {s["name"] for s in state["snapshots"]} == set(expected) - {"<present>"}
    for snap in state["snapshots"]:
        assert_reads(snap["disks"]["vda"], expected[snap["name"]], CLUSTERS)
    assert_reads(state["disks"]["vda"]["active"], expected["<present>"], CLUSTERS)


def test_explain_says_what_keeps_each_image_and_its_routes_work(cli: Cli) -> None:
    expected = rfc_story(cli)
    base = cli.json("explain", "vm", cli.path("base.qcow2"))
    assert set(base) >= EXPLAIN_KEYS
    assert base["owner"] == "adopted" and base["state"] == ["frozen", "branch-point"]
    assert base["frozen_by"] == [{"vm": "vm", "snapshot": "snap1", "disk": "vda"}]
    assert base["branches"] == [cli.path("base.snap1"), cli.path("base.snap1-1")]
    assert base["freed_by"] == [] and "user's own file" in base["nothing_frees_it"]
    assert base["may_write"] is False and base["may_delete"] is False

    snap1 = cli.json("explain", "vm", cli.path("base.snap1"))
    assert snap1["owner"] == "managed" and snap1["state"] == ["frozen"]
    assert [h["detail"] for h in snap1["resting_on_it"]] == ["snap3"]
    routes = [r["commands"] for r in snap1["freed_by"]]
    assert routes == [
        ["snapledger delete vm snap2 --strategy pull"],
        ["snapledger delete vm snap3", "snapledger delete vm snap2"],
    ]
    assert snap1["freed_by"][0]["bytes_moved"] == 6 * CLUSTER  # what a pull would move

    human = cli.run("explain", "vm", cli.path("base.snap1")).stdout
    for part in ("owner:      managed", "kept because:", "holds snapshot snap2 of vm",
                 "$ snapledger delete vm snap2 --strategy pull", "may delete: no"):
        assert part in human, human

    for command in routes[1]:  # the route that moves no data
        cli.run(*command.split()[1:])
    assert not Path(cli.path("base.snap1")).exists() and not Path(cli.path("base.snap2")).exists()
    del expected["snap2"], expected["snap3"]
    check_bytes(cli, expected)
    cli.run("verify")


def test_explain_takes_a_relative_path_and_refuses_unknown_ones(cli: Cli) -> None:
    rfc_story(cli)
    done = subprocess.run(
        [*CLI, "explain", "vm", "base.snap1-1", "--json"], cwd=cli.dir, env=cli.env,
        capture_output=True, text=True, timeout=120, check=True,
    )
    present = json.loads(done.stdout)
    assert present["path"] == cli.path("base.snap1-1") and present["state"] == ["active"]
    assert present["freed_by"][0]["commands"] == ["snapledger revert vm snap1"]
    before = cli.state()
    missing = cli.run("explain", "vm", cli.path("nope.qcow2"), expect=2)
    assert "holds no image" in missing.stderr
    cli.run("explain", "ghost", cli.path("base.qcow2"), expect=2)
    assert cli.state() == before


def test_tree_marks_the_current_snapshot_and_draws_the_image_dag(cli: Cli) -> None:
    rfc_story(cli)
    tree = cli.json("tree", "vm")
    assert tree["current"] == "snap1" and tree["roots"] == ["snap1"]
    assert {n: s["current"] for n, s in tree["snapshots"].items()} == {
        "snap1": True, "snap2": False, "snap3": False,
    }
    lines = cli.run("tree", "vm").stdout.splitlines()
    assert lines[0] == f"vm  images in {cli.dir}"
    assert "snap1  *current" in lines[1]  # its size follows
    assert "(present: vda=base.snap1-1)" in lines[2]
    assert "── snap2  " in lines[3] and "── snap3  " in lines[4]  # each with its size

    images = cli.json("tree", "vm", "--images")
    assert images["roots"] == [cli.path("base.qcow2")]
    base = images["images"][cli.path("base.qcow2")]
    assert base["branch_point"] is True and base["snapshots"] == ["snap1"]
    assert base["children"] == [cli.path("base.snap1"), cli.path("base.snap1-1")]
    drawn = cli.run("tree", "vm", "--images").stdout
    assert f"(in {cli.dir})" in drawn
    for part in ("base.qcow2  adopted · freezes snap1 · branch point: 2 histories",
                 "base.snap1  managed · freezes snap2", "base.snap2  managed · freezes snap3",
                 "base.snap1-1  managed · active vda (present)"):
        assert part in drawn, drawn


def test_export_dot_is_read_by_graphviz_and_renders(cli: Cli) -> None:
    rfc_story(cli)
    dot = shutil.which("dot")
    assert dot is not None, "graphviz's dot is needed: run .ci/setup"
    text = cli.run("export", "vm", "--format", "dot").stdout
    parsed = subprocess.run([dot, "-Tjson0"], input=text, capture_output=True, text=True, check=True)
    graph = json.loads(parsed.stdout)
    names = [o["name"] for o in graph["objects"]]
    assert sorted(names) == sorted(cli.path(f) for f in ("base.qcow2", "base.snap1", "base.snap2", "base.snap1-1"))
    edges = sorted((names[e["tail"]], names[e["head"]]) for e in graph["edges"])
    assert edges == [
        (cli.path("base.snap1"), cli.path("base.qcow2")),
        (cli.path("base.snap1-1"), cli.path("base.qcow2")),
        (cli.path("base.snap2"), cli.path("base.snap1")),
    ]
    svg = subprocess.run([dot, "-Tsvg"], input=text, capture_output=True, text=True, check=True).stdout
    assert "<svg" in svg and ">base.snap2<" in svg and ">freezes snap2<" in svg
    # the whole ledger holds this one VM: the same picture under another title
    assert cli.run("export", "--format", "dot").stdout == text.replace("images of vm", "images of every VM")


def test_export_dot_of_an_unknown_vm_or_format_is_bad_input(cli: Cli) -> None:
    rfc_story(cli)
    cli.run("export", "ghost", "--format", "dot", expect=2)
    cli.run("export", "vm", "--format", "svg", expect=2)


def test_the_rfc_pictures_in_docs_are_there_and_graphviz_reads_them() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    page = (docs / "pictures.md").read_text(encoding="utf-8")
    dot = shutil.which("dot")
    assert dot is not None, "graphviz's dot is needed: run .ci/setup"
    stems = ["rfc-diagram1", "rfc-diagram1-revert", "rfc-diagram2", "rfc-diagram2-delete-snap2"]
    for stem in stems:
        assert f"(pictures/{stem}.svg)" in page
        assert (docs / "pictures" / f"{stem}.svg").read_text(encoding="utf-8").rstrip().endswith("</svg>")
        text = (docs / "pictures" / f"{stem}.dot").read_text(encoding="utf-8")
        subprocess.run([dot, "-Tjson0"], input=text, capture_output=True, text=True, check=True)
    assert "snap1  *current" in page and "branch point: 2 histories" in page
