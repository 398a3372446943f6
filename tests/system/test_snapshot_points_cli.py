"""`diff VM A B` with snapshots and times for A and B, and `show VM NAME`, on real qcow2 files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cli_helpers import Cli
from qemu_helpers import CLUSTER, make_image

SIZE = 16 * CLUSTER


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """web: s1 <- s2 <- "12" (a snapshot named like a position), then a revert to s1 and s3
    taken on that branch."""
    cli = Cli(tmp_path_factory.mktemp("points"))
    base = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10})
    cli.run("adopt", "web", "--disk", f"vda={base}")
    cli.run("snapshot", "web", "s1", "--description", "before the upgrade")
    cli.run("snapshot", "web", "s2")
    cli.run("snapshot", "web", "12")
    cli.run("revert", "web", "s1")
    cli.run("snapshot", "web", "s3")
    return cli


def taken_at(cli: Cli, name: str) -> int:
    """The position of the event that took `name`, read from the trail."""
    (position,) = [
        e["position"] for e in cli.json("log", "web")
        if e["summary"] == f"SnapshotTaken {name}"
    ]
    return int(position)


def test_a_snapshot_names_the_position_it_was_taken_at(cli: Cli) -> None:
    s1, s2 = taken_at(cli, "s1"), taken_at(cli, "s2")
    by_name = cli.json("diff", "web", "s1", "s2")
    assert (by_name["from"], by_name["to"]) == (s1, s2)
    assert by_name["points"] == {"from": "s1", "to": "s2"}
    by_number = cli.json("diff", "web", str(s1), str(s2))
    assert {k: v for k, v in by_name.items() if k != "points"} == {
        k: v for k, v in by_number.items() if k != "points"
    }
    assert [s["name"] for s in by_name["snapshots"]["added"]] == ["s2"]
    human = cli.run("diff", "web", "s1", "s2").stdout
    assert human.splitlines()[0] == f"VM web: from s1 (position {s1}) to s2 (position {s2})"


def test_digits_are_a_position_unless_name_is_said(cli: Cli) -> None:
    twelve = taken_at(cli, "12")
    assert cli.json("diff", "web", "0", "12")["to"] == 12
    assert cli.json("diff", "web", "0", "name:12")["to"] == twelve
    assert cli.json("diff", "web", "pos:3", "pos:12")["from"] == 3


def test_a_time_names_the_last_position_at_or_before_it(cli: Cli) -> None:
    log = cli.json("log")
    late = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert cli.json("diff", "web", "s1", late)["to"] == log[-1]["position"]
    early = "2000-01-01T00:00:00Z"
    assert cli.json("diff", "web", early, "at:" + late)["from"] == 0


def test_bad_points_are_one_line_exit_2(cli: Cli) -> None:
    for args in [
        ("diff", "web", "s9", "s1"),
        ("diff", "web", "name:nope", "s1"),
        ("diff", "web", "pos:x", "s1"),
        ("diff", "web", "s1", "at:tomorrow"),
        ("diff", "web", "s2", "s1"),  # the later one first
        ("diff", "nope", "s1", "s2"),
        ("show", "web", "nope"),
        ("show", "web", "s3", "--at-event", str(taken_at(cli, "s3") - 1)),  # not taken yet
        ("show", "nope", "s1"),
    ]:
        done = cli.run(*args, expect=2)
        assert "Traceback" not in done.stderr


def test_show_vm_name_is_the_snapshot_in_detail(cli: Cli) -> None:
    s1 = cli.json("show", "web", "s1")
    listed = {s["name"]: s for s in cli.json("show", "web")["snapshots"]}
    assert s1["name"] == "s1" and s1["parent"] is None
    assert s1["children"] == ["s2", "s3"]
    assert s1["created"] == listed["s1"]["created"]
    assert datetime.fromisoformat(s1["created"]).utcoffset() == timedelta(0)
    assert s1["description"] == "before the upgrade"
    assert s1["current"] is False and s1["state"] is None
    assert s1["disks"] == {"vda": cli.path("base.qcow2")}
    assert s1["position"] == taken_at(cli, "s1")
    assert cli.json("show", "web", "s3")["current"] is True
    human = cli.run("show", "web", "s1").stdout
    assert "Children:     s2, s3" in human
    assert f"  vda: {cli.path('base.qcow2')}" in human
    created = datetime.fromisoformat(s1["created"]).astimezone()
    assert f"Created:      {created:%Y-%m-%d %H:%M:%S %z}" in human


def test_show_vm_name_in_the_past(cli: Cli) -> None:
    at = str(taken_at(cli, "12"))
    then = cli.json("show", "web", "s1", "--at-event", at)
    assert then["children"] == ["s2"] and then["position"] == taken_at(cli, "s1")
    assert cli.json("show", "web", "12", "--at-event", at)["current"] is True
    assert "snapshots" in cli.json("show", "web", "--at-event", at)  # show VM is unchanged
