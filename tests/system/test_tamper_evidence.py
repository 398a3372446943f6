"""The hash chain end to end: a real ledger built by the CLI on real images, then changed with the
sqlite3 command behind snapledger's back; `verify` must name what happened and where."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Cli
from qemu_helpers import CLUSTER, make_image

from snapledger.adapters.checkpoint.rules import (
    ROW_COLUMNS,
    Tracking,
    row_checksum,
    tracking_checksum,
)

assert shutil.which("sqlite3"), "the sqlite3 command is needed (.ci/setup installs it)"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    cli = Cli(tmp_path)
    base = make_image(cli.path("base.qcow2"), 16 * CLUSTER, {0: 0x10})
    cli.run("--actor", "alice", "--reason", "ticket 42", "adopt", "vm", "--disk", f"vda={base}")
    for name in ("snap1", "snap2", "snap3"):
        cli.run("snapshot", "vm", name)
    cli.run("revert", "vm", "snap1")
    return cli


def sql(cli: Cli, statement: str) -> str:
    done = subprocess.run(
        ["sqlite3", str(cli.dir / "ledger.sqlite"), statement],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return done.stdout.strip()


def verify(cli: Cli, *args: str, expect: int) -> dict[str, Any]:
    done = cli.run("verify", *args, "--json", expect=expect)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def kinds(report: dict[str, Any]) -> list[str]:
    return [f.split(": ")[1] for f in report["chain"]]


def position_of(cli: Cli, event_type: str) -> int:
    return next(e["position"] for e in cli.json("log") if e["type"].endswith(event_type))


def test_an_untouched_ledger_verifies_and_gives_its_head(cli: Cli) -> None:
    report = verify(cli, expect=0)
    assert report["ok"] and report["chain"] == [] and report["disks"] == []
    last = len(cli.json("log"))
    assert report["head"]["position"] == last
    assert len(report["head"]["hash"]) == 64
    assert verify(cli, "--expect-head", report["head"]["hash"], expect=0)["ok"]
    text = cli.run("verify", "--head").stdout
    assert f"head {last} {report['head']['hash']}" in text


def test_who_where_why_are_recorded_with_every_event(cli: Cli) -> None:
    entries = cli.json("log")
    adopted = next(e for e in entries if e["type"].endswith("Adopted"))
    assert adopted["actor"] == "alice" and adopted["reason"] == "ticket 42"
    assert adopted["host"] and adopted["tool_version"]
    later = entries[-1]
    assert later["actor"] != "" and later["reason"] is None


def test_editing_a_stored_events_bytes_is_found(cli: Cli) -> None:
    position = position_of(cli, "SnapshotTaken")
    sql(cli, f"UPDATE stored_events SET state = CAST(replace(CAST(state AS TEXT), 'snap', 'snaq') AS BLOB) WHERE rowid = {position}")
    report = verify(cli, expect=3)
    assert f"ledger position {position}: edited" in " ".join(report["chain"])
    assert kinds(report) == ["edited"]


@pytest.mark.parametrize("text", [
    "replace(state, 'snap', 'snaq')",  # replace() on a BLOB gives TEXT: the row's type changes too
    "CAST(state AS TEXT)",  # only the type changes, not one byte
])
def test_an_event_stored_as_text_instead_of_bytes_is_found_not_a_traceback(cli: Cli, text: str) -> None:
    position = position_of(cli, "SnapshotTaken")
    sql(cli, f"UPDATE stored_events SET state = {text} WHERE rowid = {position}")
    report = verify(cli, expect=3)
    assert f"ledger position {position}: edited" in " ".join(report["chain"])


def test_bytes_edited_until_unreadable_are_found_not_a_traceback(cli: Cli) -> None:
    sql(cli, "UPDATE stored_events SET state = CAST('{not json' AS BLOB) WHERE rowid = 1")
    report = verify(cli, expect=3)
    assert "ledger position 1: edited" in report["chain"][0]
    # A command acts on the checkpoint folded before the edit (anchored to the chain, which
    # vouches for the event as it was), not on the edited bytes: it never reads them. A process
    # that has to fold the events again stops with one line pointing at verify.
    cli.run("snapshot", "vm", "later")
    assert "ledger position 1: edited" in verify(cli, expect=3)["chain"][0]
    sql(cli, "DROP TABLE snapledger_projection")  # as after an upgrade: the events are folded
    done = cli.run("snapshot", "vm", "later2", expect=3)
    assert "verify" in done.stderr and "Traceback" not in done.stderr


def test_deleting_an_event_is_found(cli: Cli) -> None:
    sql(cli, "DELETE FROM stored_events WHERE rowid = 4")
    assert kinds(verify(cli, expect=3)) == ["deleted"]


def test_deleting_an_event_and_its_chain_record_breaks_the_chain_after_it(cli: Cli) -> None:
    sql(cli, "DELETE FROM stored_events WHERE rowid = 4; DELETE FROM snapledger_chain WHERE position = 4")
    report = verify(cli, expect=3)
    assert report["chain"] == [report["chain"][0]] and "ledger position 5: broken" in report["chain"][0]


def test_inserting_an_event_is_found(cli: Cli) -> None:
    sql(
        cli,
        "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
        "SELECT originator_id, originator_version + 1000, topic, state FROM stored_events WHERE rowid = 3",
    )
    report = verify(cli, expect=3)
    assert kinds(report) == ["inserted"]


def test_reordering_two_events_is_found(cli: Cli) -> None:
    a, b = 5, 6
    sql(
        cli,
        "CREATE TEMP TABLE t AS SELECT rowid AS r, * FROM stored_events WHERE rowid IN (5, 6); "
        f"UPDATE stored_events SET originator_id = (SELECT originator_id FROM t WHERE r = {b}), "
        f"originator_version = (SELECT originator_version FROM t WHERE r = {b}) + 100000, "
        f"topic = (SELECT topic FROM t WHERE r = {b}), state = (SELECT state FROM t WHERE r = {b}) WHERE rowid = {a}; "
        f"UPDATE stored_events SET originator_id = (SELECT originator_id FROM t WHERE r = {a}), "
        f"originator_version = (SELECT originator_version FROM t WHERE r = {a}), "
        f"topic = (SELECT topic FROM t WHERE r = {a}), state = (SELECT state FROM t WHERE r = {a}) WHERE rowid = {b}; "
        f"UPDATE stored_events SET originator_version = originator_version - 100000 WHERE rowid = {a};",
    )
    report = verify(cli, expect=3)
    assert kinds(report) == ["reordered", "reordered"], report["chain"]
    assert "position 5: reordered: this event was recorded at position 6" in report["chain"][0]


def test_editing_who_recorded_an_event_is_found(cli: Cli) -> None:
    sql(cli, "UPDATE snapledger_chain SET actor = 'mallory' WHERE position = 1")
    assert kinds(verify(cli, expect=3)) == ["record-edited"]


def test_a_truncated_tail_is_found_only_against_a_kept_head(cli: Cli) -> None:
    kept = verify(cli, expect=0)["head"]
    sql(
        cli,
        f"DELETE FROM stored_events WHERE rowid > {kept['position'] - 3}; "
        f"DELETE FROM snapledger_chain WHERE position > {kept['position'] - 3}",
    )
    # A shorter chain is self-consistent; the checkpoint saved at the old end gives it away
    # (once: it is dropped), and the disks do (an unfinished revert).
    first = verify(cli, expect=3)["chain"]
    assert len(first) == 1 and f"up to position {kept['position']}" in first[0], first
    assert verify(cli, expect=3)["chain"] == []
    report = verify(cli, "--expect-head", kept["hash"], expect=3)
    assert kinds(report) == ["truncated"]
    cli.run("verify", "--expect-head", "xyz", expect=2)


def test_the_chain_grows_on_from_a_kept_head(cli: Cli) -> None:
    kept = verify(cli, expect=0)["head"]["hash"]
    cli.run("snapshot", "vm", "later")
    assert verify(cli, "--expect-head", kept, expect=0)["ok"]


def test_log_filters_by_vm_time_and_type(cli: Cli) -> None:
    entries = cli.json("log")
    assert [e["position"] for e in entries] == list(range(1, len(entries) + 1))
    middle = entries[len(entries) // 2]
    since = [e["position"] for e in cli.json("log", "--since", middle["time"])]
    until = [e["position"] for e in cli.json("log", "--until", middle["time"])]
    assert since[0] == middle["position"] and until[-1] == middle["position"]
    assert sorted(set(since) | set(until)) == [e["position"] for e in entries]
    taken = cli.json("log", "vm", "--type", "SnapshotTaken", "--type", "VirtualMachine.Reverted")
    assert [e["summary"] for e in taken] == [
        "SnapshotTaken snap1", "SnapshotTaken snap2", "SnapshotTaken snap3", "Reverted snap1"
    ]
    assert all(e["vm"] == "vm" for e in cli.json("log", "vm"))
    cli.run("log", "--type", "Snapshot", expect=2)
    cli.run("log", "--since", "someday", expect=2)
    assert cli.json("log", "--since", "yesterday") == entries  # all of it happened today
    cli.run("log", "nope", expect=2)


def test_the_trail_index_is_a_cache_that_verify_checks(cli: Cli) -> None:
    truth = cli.json("log")  # builds the index
    sql(cli, "UPDATE snapledger_trail_v2 SET summary = 'forged' WHERE position = 3")
    assert cli.json("log")[2]["summary"] == "forged"  # log trusts its cache...
    report = verify(cli, expect=3)  # ...until verify recomputes it from the checked events
    assert "trail index" in report["chain"][0]
    assert cli.json("log") == truth
    assert verify(cli, expect=0)["ok"]


def forge_vm_row(cli: Cli, old: str, new: str) -> None:
    """Edit VM vm's checkpoint row and recompute its checksum, as someone who read the code
    would: every check a loading process makes still passes."""
    con = sqlite3.connect(cli.dir / "ledger.sqlite")
    with con:
        rows = con.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM snapledger_checkpoint").fetchall()
        forged = [r for r in rows if old.encode() in r[4]]
        assert len(forged) == 1
        oid, version, born, topic, state, _, live = forged[0]
        state = state.replace(old.encode(), new.encode())
        con.execute(
            "UPDATE snapledger_checkpoint SET state = ?, checksum = ? WHERE originator_id = ?",
            (state, row_checksum(oid, version, born, topic, state, bool(live)), oid),
        )
    con.close()


def test_a_checkpoint_forged_with_its_checksums_right_is_found_by_verify_and_dropped(cli: Cli) -> None:
    """A command trusts a checkpoint that passes its cheap checks (as it trusts an event whose
    chain was recomputed); verify folds the events again and finds the forgery."""
    truth = cli.json("show", "vm")
    assert truth["current"] == "snap1"
    forge_vm_row(cli, '"current":"snap1"', '"current":"snap2"')
    report = verify(cli, expect=3)
    assert len(report["chain"]) == 1 and "persisted projection" in report["chain"][0]
    assert "VM 'vm' differs" in report["chain"][0], report["chain"]
    forged = "SELECT COUNT(*) FROM snapledger_checkpoint WHERE CAST(state AS TEXT) LIKE '%\"current\":\"snap2\"%'"
    assert sql(cli, forged) == "0"  # dropped, and rebuilt from the events
    assert cli.json("show", "vm") == truth
    assert verify(cli, expect=0)["ok"]


def test_a_checkpoint_edited_without_its_checksum_is_never_acted_on(cli: Cli) -> None:
    truth = cli.json("show", "vm")
    sql(cli, "UPDATE snapledger_checkpoint SET state = CAST(replace(CAST(state AS TEXT), "
             "'\"current\":\"snap1\"', '\"current\":\"snap2\"') AS BLOB)")
    sql(cli, "DELETE FROM snapledger_show_docs")  # no stored document to answer `show` from
    assert cli.json("show", "vm") == truth
    cli.run("delete", "vm", "snap2")  # acts on the events' state (snap1 current), not the edit
    assert cli.json("show", "vm")["current"] == "snap1"
    assert verify(cli, expect=0)["ok"]


def recount_live_rows(cli: Cli) -> None:
    """Make the tracking row agree with the rows' live marks again (as a forger would)."""
    con = sqlite3.connect(cli.dir / "ledger.sqlite")
    with con:
        found = con.execute(
            "SELECT position, fingerprint, aggregates, archived, anchor FROM snapledger_projection"
        ).fetchone()
        live = con.execute("SELECT COUNT(*) FROM snapledger_checkpoint WHERE live = 1").fetchone()[0]
        tracking = Tracking(*found, live)
        con.execute("UPDATE snapledger_projection SET live_rows = ?, checksum = ?",
                    (live, tracking_checksum(tracking)))
    con.close()


@pytest.mark.parametrize("mark", ["2", "0"])
def test_a_vm_hidden_from_a_processs_load_is_found_by_verify(cli: Cli, mark: str) -> None:
    """A VM's row marked not live (with its checksum left as it was, or recomputed) would keep it
    from what a process loads: verify reads every row and refuses a mark its aggregate belies."""
    truth = cli.json("show", "vm")
    oid = sql(cli, "SELECT originator_id FROM snapledger_checkpoint WHERE CAST(state AS TEXT) LIKE '%\"disks\"%'")
    sql(cli, f"UPDATE snapledger_checkpoint SET live = {mark} WHERE originator_id = '{oid}'")
    if mark == "0":
        con = sqlite3.connect(cli.dir / "ledger.sqlite")
        with con:
            row = con.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM snapledger_checkpoint WHERE originator_id = ?", (oid,)).fetchone()
            con.execute("UPDATE snapledger_checkpoint SET checksum = ? WHERE originator_id = ?",
                        (row_checksum(*row[:5], False), oid))
        con.close()
    recount_live_rows(cli)
    report = verify(cli, expect=3)
    found = report["chain"][0]
    assert "persisted projection" in found and ("marked not live" in found or "is damaged" in found)
    assert cli.json("show", "vm") == truth and cli.json("list")[0]["vm"] == "vm"
    assert verify(cli, expect=0)["ok"]


def test_a_checkpoint_column_edited_into_another_type_is_rebuilt_not_a_crash(cli: Cli) -> None:
    truth = cli.json("show", "vm")
    sql(cli, "UPDATE snapledger_checkpoint SET state = replace(state, 'snap2', 'snap9'), born = 'x'")
    sql(cli, "DELETE FROM snapledger_show_docs")
    assert cli.json("show", "vm") == truth  # folded from the events, no TypeError
    sql(cli, "UPDATE snapledger_projection SET position = 'abc'")
    cli.run("snapshot", "vm", "after")
    assert "after" in [snapshot["name"] for snapshot in cli.json("show", "vm")["snapshots"]]
    assert verify(cli, expect=0)["ok"]


def test_a_forged_birth_that_would_swap_a_readopted_vm_for_its_retired_one_is_found(cli: Cli) -> None:
    cli.run("retire", "vm")
    fresh = make_image(cli.path("fresh.qcow2"), 16 * CLUSTER, {0: 0x20})
    cli.run("adopt", "vm", "--disk", f"vda={fresh}")
    top = int(sql(cli, "SELECT position FROM snapledger_projection"))
    con = sqlite3.connect(cli.dir / "ledger.sqlite")
    with con:
        rows = con.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM snapledger_checkpoint ORDER BY born DESC").fetchall()
        newest = next(r for r in rows if b'"generation":2' in r[4] or b'"generation": 2' in r[4])
        oid, version, _, topic, state, _, live = newest
        con.execute("UPDATE snapledger_checkpoint SET born = ?, checksum = ? WHERE originator_id = ?",
                    (top + 1000, row_checksum(oid, version, top + 1000, topic, state, bool(live)), oid))
    con.close()
    report = verify(cli, expect=3)
    assert "was born differs" in report["chain"][0] or "damaged" in report["chain"][0], report["chain"]
    assert cli.json("list")[0]["snapshots"] == 0  # the new VM, as the events say
