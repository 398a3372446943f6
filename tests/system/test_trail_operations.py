"""The trail by operation (semantics.md, "The trail, operation by operation"; cli.md): every
event of a command carries its operation id, changing commands' JSON names it and its last
position, refusals are recorded with who, where and why, and `log` reads one line per operation."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from cli_helpers import Cli
from qemu_helpers import CLUSTER, make_image, write_clusters

SIZE = 16 * CLUSTER


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    cli = Cli(tmp_path)
    cli.env["SNAPLEDGER_ACTOR"] = "alice"
    base = make_image(cli.path("base.qcow2"), SIZE, {0: 0x10})
    cli.run("adopt", "vm", "--disk", f"vda={base}")
    return cli


def chain_operations(cli: Cli) -> dict[int, str | None]:
    con = sqlite3.connect(cli.dir / "ledger.sqlite")
    try:
        return dict(con.execute("SELECT position, operation FROM snapledger_chain"))
    finally:
        con.close()


def test_each_changing_command_names_its_operation_and_position(cli: Cli) -> None:
    taken = cli.json("snapshot", "vm", "s1", "--reason", "before upgrade")
    write_clusters(cli.path("base.s1"), {1: 0x21})
    second = cli.json("snapshot", "vm", "s2")
    deleted = cli.json("delete", "vm", "s1")
    dry = cli.json("delete", "vm", "s2", "--dry-run")
    assert dry["operation_id"] is None and dry["position"] is None  # a dry run records nothing
    ids = [taken["operation_id"], second["operation_id"], deleted["operation_id"]]
    assert len(set(ids)) == 3 and all(len(i) == 32 for i in ids)
    by_position = chain_operations(cli)
    for done in (taken, second, deleted):
        mine = sorted(p for p, op in by_position.items() if op == done["operation_id"])
        assert mine and mine[-1] == done["position"]
        assert mine == list(range(mine[0], mine[-1] + 1))  # one command's events, together
    assert by_position[max(by_position)] == deleted["operation_id"]
    ops = cli.json("log", "--operations")
    assert [(o["kind"], o["target"], o["result"]) for o in ops] == [
        ("adopt", None, "done"), ("snapshot", "s1", "done"), ("snapshot", "s2", "done"),
        ("delete", "s1", "done"),
    ]
    assert ops[1]["reason"] == "before upgrade" and ops[1]["actor"] == "alice"
    assert ops[3]["operation"] == deleted["operation_id"] and ops[3]["position"] == deleted["position"]
    assert set(ops[0]) >= {"operation", "vm", "kind", "target", "result", "started", "finished",
                           "actor", "host", "reason", "bytes_moved"}
    # show's open operation is log's: a VM operation has the command's id
    events = cli.json("log", "--events")
    started = [e for e in events if e["type"].endswith("OperationStarted")]
    assert [e["operation"] for e in started] == ids


def test_a_refusal_is_recorded_with_who_where_and_why_and_changes_nothing(cli: Cli) -> None:
    for name in ("s0", "s1", "s2"):
        cli.run("snapshot", "vm", name)
    cli.run("revert", "vm", "s1")  # s1, its image managed, is now a branch point
    before = cli.state()
    refused = cli.run("delete", "vm", "s1", "--reason", "tidy up", expect=3)
    assert cli.state() == before
    last = cli.json("log", "--operations")[-1]
    assert (last["kind"], last["target"], last["result"]) == ("delete", "s1", "refused")
    assert last["actor"] == "alice" and last["host"] and last["reason"] == "tidy up"
    assert last["why"] and last["why"] in " ".join(refused.stderr.split())
    human = cli.run("log").stdout.splitlines()[-1]
    assert "refused" in human and "delete vm s1" in human and "alice@" in human
    # bad input is not an attempt worth keeping; a dry run records nothing
    cli.run("delete", "vm", "nosuch", expect=2)
    cli.run("delete", "vm", "s1", "--dry-run", expect=3)
    assert cli.json("log", "--operations")[-1]["operation"] == last["operation"]


def test_log_reads_one_line_per_operation_with_filters(cli: Cli) -> None:
    for name in ("s1", "s2", "s3"):
        cli.run("snapshot", "vm", name)
    cli.env["SNAPLEDGER_ACTOR"] = "bob"
    cli.run("delete", "vm", "s2")
    lines = cli.run("log").stdout.splitlines()
    assert len(lines) == 5  # adopt, three snapshots, a delete: not their 30-odd events
    assert "delete vm s2" in lines[-1] and "bob@" in lines[-1]
    assert cli.run("log", "-n", "2").stdout.splitlines() == lines[-2:]
    assert cli.run("log", "-n", "2", "--reverse").stdout.splitlines() == lines[-1:-3:-1]
    assert [o["target"] for o in cli.json("log", "--operations", "--by", "bob")] == ["s2"]
    assert cli.json("log", "--operations", "--by", "carol") == []
    assert [o["kind"] for o in cli.json("log", "--operations", "--type", "delete")] == ["delete"]
    assert len(cli.json("log", "--operations", "--since", "1h")) == 5
    assert cli.json("log", "--operations", "--until", "2h") == []
    events = cli.run("log", "--events").stdout.splitlines()
    assert len(events) == len(cli.json("log")) > len(lines)
    no_actor_filter = cli.run("log", "--actor", "nobody", expect=2)
    assert "--by" in no_actor_filter.stderr
    cli.run("log", "--type", "nosuch", expect=2)
    cli.run("log", "--since", "soon", expect=2)
    for line in lines:  # to the second, in local time with the zone; no reprs
        assert ".%06d" not in line and "(" not in line


def test_prune_names_every_deletion_operation(cli: Cli) -> None:
    for name in ("a", "b", "c", "d"):
        cli.run("snapshot", "vm", name)
    pruned = cli.json("prune", "vm", "--keep-last", "1")
    assert pruned["deleted"] == ["a", "b", "c"]
    assert len(pruned["operations"]) == 3
    ops = cli.json("log", "--operations", "--type", "delete")
    assert [o["operation"] for o in ops] == pruned["operations"]
    assert pruned["position"] == ops[-1]["position"]
    assert cli.json("prune", "vm", "--keep-last", "1", "--dry-run")["operations"] == []
