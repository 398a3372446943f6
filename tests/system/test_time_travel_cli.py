"""Time travel through the command line on real qcow2 files: `show --at-event N`, `show --at
TIME` and `diff VM N M` give back exactly what `show` said at the time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cli_helpers import Cli
from qemu_helpers import CLUSTER, assert_reads, make_image, write_clusters

CLUSTERS = 16
SIZE = CLUSTERS * CLUSTER


@dataclass
class Moment:
    """What `show` said right after a command, and the ledger position then."""

    command: str
    position: int
    time: datetime  # the time of the event at `position`
    show: Any  # show --json
    human: str  # show


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> tuple[Cli, list[Moment]]:
    """One history for the module's tests, which only read it."""
    cli = Cli(tmp_path_factory.mktemp("time-travel"))
    return cli, history(cli)


def remember(cli: Cli, command: str, moments: list[Moment]) -> None:
    last = cli.json("log")[-1]
    moments.append(Moment(
        command, last["position"], datetime.fromisoformat(last["time"]),
        cli.json("show", "vm"), cli.run("show", "vm").stdout,
    ))


def history(cli: Cli) -> list[Moment]:
    """Snapshots with writes between them, a revert (an alternate history), two deletes (a
    merge and a drop) and a swapped-in disk; `show` captured after each command."""
    moments: list[Moment] = []
    base = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10})
    cli.run("adopt", "vm", "--disk", f"vda={base}")
    remember(cli, "adopt", moments)
    for n, name in enumerate(["s1", "s2", "s3"], start=1):
        cli.run("snapshot", "vm", name, "--description", f"before write {n}")
        remember(cli, f"snapshot {name}", moments)
        write_clusters(moments[-1].show["disks"]["vda"]["active"], {n: 0x20 + n})
    cli.run("revert", "vm", "s1")
    remember(cli, "revert s1", moments)
    cli.run("delete", "vm", "s2")  # s3 gets s1 as its parent; base.s1 and base.s2 merge
    remember(cli, "delete s2", moments)
    cli.run("delete", "vm", "s3")
    remember(cli, "delete s3", moments)
    mine = make_image(cli.path("mine.qcow2"), SIZE, {5: 0x55})
    cli.run("swap-disk", "vm", "vda", mine)
    remember(cli, "swap-disk", moments)
    make_image(cli.path("other.qcow2"), SIZE)
    cli.run("adopt", "other", "--disk", f"vda={cli.path('other.qcow2')}")
    remember(cli, "adopt other", moments)
    return moments


def test_show_at_each_position_and_time_is_what_show_said_then(
    story: tuple[Cli, list[Moment]],
) -> None:
    cli, moments = story
    assert len({m.position for m in moments}) == len(moments)
    for moment in moments:
        at = str(moment.position)
        assert cli.json("show", "vm", "--at-event", at) == moment.show, moment.command
        assert cli.run("show", "vm", "--at-event", at).stdout == moment.human, moment.command
        when = moment.time.astimezone(UTC).isoformat()
        assert cli.json("show", "vm", "--at", when) == moment.show, (moment.command, when)
    # Other spellings of a time: Z, another offset, naive (UTC).
    utc = moments[2].time.astimezone(UTC)
    for when in [
        utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        utc.astimezone(timezone(timedelta(hours=2))).isoformat(),
        utc.astimezone(timezone(timedelta(hours=-7, minutes=-30))).isoformat(),
        utc.replace(tzinfo=None).isoformat(),
    ]:
        assert cli.json("show", "vm", "--at", when) == moments[2].show, when
    # A time between two commands: the state after the earlier one.
    times = {e["position"]: datetime.fromisoformat(e["time"]) for e in cli.json("log")}
    for earlier, later in zip(moments, moments[1:], strict=False):
        between = earlier.time + (times[earlier.position + 1] - earlier.time) / 2
        assert cli.json("show", "vm", "--at", between.isoformat()) == earlier.show, later.command
    # The present is what `show` says now; the past snapshots still read what they read.
    assert cli.json("show", "vm", "--at", "2999-01-01T00:00:00Z") == cli.json("show", "vm")
    past = moments[3].show  # after s3: every snapshot there
    assert [s["name"] for s in past["snapshots"]] == ["s1", "s2", "s3"]
    assert_reads(cli.path("base.qcow2"), {0: 0x10}, CLUSTERS)


def test_bad_positions_and_times_are_one_line_exit_2(story: tuple[Cli, list[Moment]]) -> None:
    cli, moments = story
    last = moments[-1].position
    before = cli.state()
    for args in [
        ("show", "vm", "--at-event", "0"),
        ("show", "vm", "--at-event", "-3"),
        ("show", "vm", "--at-event", str(last + 1)),
        ("show", "vm", "--at-event", "five"),
        ("show", "vm", "--at", "yesterday"),
        ("show", "vm", "--at", "2026-13-45T00:00:00Z"),
        ("show", "vm", "--at-event", "1", "--at", "2999-01-01T00:00:00Z"),
        ("show", "vm", "--at", (moments[0].time - timedelta(seconds=5)).isoformat()),  # before adopt
        ("show", "other", "--at-event", str(moments[-2].position)),  # not adopted yet then
        ("show", "nope", "--at-event", "1"),
        ("diff", "vm", "5", "3"),
        ("diff", "vm", "1", str(last + 1)),
        ("diff", "other", "1", str(moments[-2].position)),
        ("diff", "vm", "one", "2"),
    ]:
        done = cli.run(*args, expect=2)
        assert "Traceback" not in done.stderr
    assert cli.state() == before


def test_diff_says_what_changed_between_two_positions(story: tuple[Cli, list[Moment]]) -> None:
    cli, told = story
    moments = {m.command: m for m in told}
    path = cli.path

    def diff(start: str, end: str) -> Any:
        return cli.json("diff", "vm", str(moments[start].position), str(moments[end].position))

    # The revert: a new overlay over s1's image is active; the abandoned present is deleted.
    revert = diff("snapshot s3", "revert s1")
    assert revert["from"] == moments["snapshot s3"].position
    assert revert["to"] == moments["revert s1"].position
    assert revert["changed"] is True
    assert revert["current"] == {"from": "s3", "to": "s1"}
    assert revert["snapshots"] == {"added": [], "removed": [], "changed": []}
    assert revert["disks"]["vda"]["active"] == {"from": path("base.s3"), "to": path("base.s1-1")}
    assert revert["disks"]["vda"]["chain"]["to"] == [path("base.s1-1"), path("base.qcow2")]
    assert revert["images"]["added"] == [{"path": path("base.s1-1"), "owner": "managed"}]
    assert revert["images"]["removed"] == [{"path": path("base.s3"), "owner": "managed"}]
    (started,) = revert["operations"]["started"]
    (finished,) = revert["operations"]["finished"]
    assert (started["kind"], started["target"]) == ("revert", "s1")
    assert finished["id"] == started["id"] and finished["outcome"] == "done"
    assert revert["from"] < started["position"] < finished["position"] <= revert["to"]

    # Deleting s2: it goes, s3's parent becomes s1, and the merge removed one image.
    delete = diff("revert s1", "delete s2")
    assert [s["name"] for s in delete["snapshots"]["removed"]] == ["s2"]
    (changed,) = delete["snapshots"]["changed"]
    assert changed["name"] == "s3" and changed["parent"] == {"from": "s2", "to": "s1"}
    assert len(delete["images"]["removed"]) == 1
    assert delete["images"]["removed"][0]["owner"] == "managed"
    assert delete["current"] is None and delete["disks"] == {}
    assert [o["kind"] for o in delete["operations"]["finished"]] == ["delete"]

    # The swap: the user's file is adopted and active; the old present stays, detached.
    swap = diff("delete s3", "swap-disk")
    assert swap["images"]["added"] == [{"path": path("mine.qcow2"), "owner": "adopted"}]
    assert swap["images"]["removed"] == []
    assert swap["disks"]["vda"]["active"]["to"] == path("mine.qcow2")
    assert swap["operations"] == {"started": [], "finished": [], "failed": []}

    # From the empty ledger: everything is new.
    everything = cli.json("diff", "vm", "0", str(moments["snapshot s1"].position))
    assert everything["current"] == {"from": None, "to": "s1"}
    assert [s["name"] for s in everything["snapshots"]["added"]] == ["s1"]
    assert {i["path"]: i["owner"] for i in everything["images"]["added"]} == {
        path("base.qcow2"): "adopted", path("base.s1"): "managed",
    }

    # A position against itself: nothing.
    same = cli.json("diff", "vm", *[str(moments["delete s2"].position)] * 2)
    assert same["changed"] is False
    assert not any(same["snapshots"].values()) and not any(same["images"].values())
    assert "no changes" in cli.run("diff", "vm", *[str(moments["delete s2"].position)] * 2).stdout
    human = cli.run("diff", "vm", str(moments["snapshot s3"].position),
                    str(moments["revert s1"].position)).stdout
    assert "current: s3 -> s1" in human and "+ image base.s1-1 (managed)" in human
    assert f"images in {path('base.s1-1').rpartition('/')[0]}" in human  # named once
