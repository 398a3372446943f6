"""`export --format jsonl` and `replay` end to end on a history made on real images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import Cli
from qemu_helpers import CLUSTER, make_image, write_clusters


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    cli = Cli(tmp_path)
    base = make_image(cli.path("base.qcow2"), 16 * CLUSTER, {0: 0x10})
    cli.run("--actor", "alice", "adopt", "vm", "--disk", f"vda={base}")
    for n, name in enumerate(("snap1", "snap2", "snap3")):
        cli.run("snapshot", "vm", name)
        write_clusters(cli.json("show", "vm")["disks"]["vda"]["active"], {n + 1: 0x20 + n})
    cli.run("revert", "vm", "snap1")
    cli.run("snapshot", "vm", "alt")  # records what the guest wrote; an alternate history
    return cli


def export(cli: Cli, *args: str) -> Path:
    path = cli.dir / "history.jsonl"
    path.write_text(cli.run("export", *args, "--format", "jsonl").stdout)
    return path


def test_replay_gives_the_same_answers_as_the_live_ledger(cli: Cli) -> None:
    path = str(export(cli))
    for command in (["show", "vm"], ["tree", "vm"], ["tree", "vm", "--images"], ["log"], ["list"],
                    ["delete", "vm", "snap1", "--branches", "pull", "--dry-run"],
                    ["explain", "vm", cli.path("base.qcow2")]):
        live = cli.json(*command)
        assert cli.json("replay", path, *command) == live, command


def test_the_export_carries_bytes_hashes_and_who(cli: Cli) -> None:
    lines = export(cli).read_text().splitlines()
    header, first = json.loads(lines[0]), json.loads(lines[1])
    assert header["format"] == "snapledger-export" and header["head"]["position"] == len(lines) - 1
    assert first["actor"] == "alice" and first["prev_hash"] == "0" * 64
    assert {"position", "time", "type", "hash", "state", "topic", "summary"} <= set(first)


def test_replay_until_shows_the_past(cli: Cli) -> None:
    path = str(export(cli))
    position = next(e["position"] for e in cli.json("log") if e["type"].endswith("Reverted"))
    past = cli.json("replay", path, "--until", str(position - 1), "show", "vm")
    assert past == cli.json("show", "vm", "--at-event", str(position - 1))
    assert past["current"] == "snap3"


def test_a_one_vm_export_replays(cli: Cli) -> None:
    path = str(export(cli, "vm"))
    assert cli.json("replay", path, "show", "vm") == cli.json("show", "vm")


def test_replay_changes_nothing_and_refuses_changes(cli: Cli) -> None:
    path = str(export(cli))
    before = cli.state()
    cli.run("replay", path, "delete", "vm", "snap2", expect=2)
    cli.run("replay", path, "adopt", "x", "--disk", f"vda={cli.path('base.qcow2')}", expect=2)
    cli.run("replay", path, "revert", "vm", "snap2", "--dry-run")
    cli.run("replay", path, expect=2)
    cli.run("replay", path, "--until", "0", "show", "vm", expect=2)
    cli.run("replay", path, "--until", "99999", "show", "vm", expect=2)
    assert cli.state() == before


def test_a_tampered_or_cut_export_is_refused(cli: Cli) -> None:
    lines = export(cli).read_text().splitlines()
    edited = []
    for line in lines:
        item = json.loads(line)
        if item.get("type", "").endswith("SnapshotTaken") and '"snap2"' in item["state"]:
            item["state"] = item["state"].replace('"snap2"', '"snapX"')
        edited.append(json.dumps(item))
    (cli.dir / "edited.jsonl").write_text("\n".join(edited) + "\n")
    (cli.dir / "cut.jsonl").write_text("\n".join(lines[:-3]) + "\n")
    (cli.dir / "junk.jsonl").write_text("not an export\n")
    assert "edited" in cli.run("replay", cli.path("edited.jsonl"), "show", "vm", expect=3).stderr
    assert "truncated" in cli.run("replay", cli.path("cut.jsonl"), "show", "vm", expect=3).stderr
    cli.run("replay", cli.path("junk.jsonl"), "show", "vm", expect=2)
    cli.run("replay", cli.path("missing.jsonl"), "show", "vm", expect=2)
