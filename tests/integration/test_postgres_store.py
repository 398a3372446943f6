"""The shared PostgreSQL store: two hosts on one ledger, one hash chain, and tampering found."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace

import psycopg
import pytest

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.eventstore.chain_postgres import SAVE_FUNCTION
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.domain.errors import ConcurrentUpdate
from snapledger.domain.ledger_hash import RecordedBy
from snapledger.domain.vm import vm_id


@pytest.fixture
def url(postgres: str) -> Iterator[str]:
    yield postgres
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")


def host(url: str, name: str, storage: SimulatedStorage) -> Snapledger:
    app = LedgerApplication(url, recorded_by=RecordedBy("ops", name, "test"))
    return ledger_service(app, storage)


def test_two_hosts_write_one_chain(url: str) -> None:
    storage = SimulatedStorage()
    for vm in ("a", "b"):
        storage.make_image(f"/images/{vm}.qcow2", 16 * CLUSTER, {0: 1})
    first, second = host(url, "host1", storage), host(url, "host2", storage)
    first.adopt("a", {"vda": "/images/a.qcow2"})
    second.adopt("b", {"vda": "/images/b.qcow2"})
    for n in range(3):
        first.snapshot("a", f"s{n}")
        second.snapshot("b", f"s{n}")
    second.delete("b", "s1")
    first.revert("a", "s0")
    assert first.app.check_chain() == []
    records = first.app.chain()
    assert [r.position for r in records] == [n for _, n in first.app.events_after(0)]
    assert {r.host for r in records} == {"host1", "host2"}
    position, head = second.app.head()
    assert position == records[-1].position and head == records[-1].hash
    assert second.refresh().canonical() == first.refresh().canonical()


def test_the_loser_of_a_race_changes_nothing(url: str) -> None:
    storage = SimulatedStorage()
    storage.make_image("/images/a.qcow2", 16 * CLUSTER, {0: 1})
    first, second = host(url, "host1", storage), host(url, "host2", storage)
    first.adopt("a", {"vda": "/images/a.qcow2"})
    stale = second.vm("a")  # loaded before the other host's snapshot
    first.snapshot("a", "s1")
    before = first.app.chain()
    stale.record_drift(["seen by a racing process"], at="2026-11-25T00:00:00+00:00")
    with pytest.raises(ConcurrentUpdate):
        second.save(stale)
    assert first.app.chain() == before and first.app.check_chain() == []


def test_editing_an_event_in_postgres_is_found(url: str) -> None:
    storage = SimulatedStorage()
    storage.make_image("/images/a.qcow2", 16 * CLUSTER, {0: 1})
    ledger = host(url, "host1", storage)
    ledger.adopt("a", {"vda": "/images/a.qcow2"})
    ledger.snapshot("a", "s1")
    with psycopg.connect(url, autocommit=True) as conn:
        table = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE '%events'"
        ).fetchone()
        assert table is not None
        done = conn.execute(
            f"UPDATE {table[0]} SET state = convert_to(replace(convert_from(state, 'UTF8'), "
            "'\"s1\"', '\"s9\"'), 'UTF8') WHERE topic LIKE '%SnapshotTaken' RETURNING notification_id"
        ).fetchall()
    assert len(done) == 1
    findings = ledger.app.check_chain()
    assert [(f.position, f.kind) for f in findings] == [(done[0][0], "edited")]


HOST_STARTING = """
import sys
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.compose import ledger_service
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage

url, name = sys.argv[1:]
storage = SimulatedStorage()
storage.make_image(f"/images/{name}.qcow2", 16 * CLUSTER, {0: 1})
ledger = ledger_service(LedgerApplication(url), storage)
ledger.adopt(name, {"vda": f"/images/{name}.qcow2"})
ledger.snapshot(name, "s1")
"""


def test_hosts_starting_together_on_an_empty_database_all_get_in(postgres: str) -> None:
    """Creating the tables is safe against hosts doing it at the same moment (PostgreSQL's
    CREATE ... IF NOT EXISTS alone is not: a unique violation in its catalog)."""
    for _ in range(3):
        database = f"race_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database}")
        url = postgres.rsplit("/", 1)[0] + "/" + database
        hosts = [
            subprocess.Popen([sys.executable, "-c", HOST_STARTING, url, f"vm{n}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for n in range(6)
        ]
        for started in hosts:
            _, err = started.communicate(timeout=300)
            assert started.returncode == 0, err.strip().splitlines()[-1:]
        app = LedgerApplication(url)
        assert app.check_chain() == []
        assert all(app.has_vm(f"vm{n}") for n in range(6))


def test_the_server_hashes_what_verify_recomputes(url: str) -> None:
    """The save function hashes on the server; verify recomputes every hash in Python. Who,
    where and why in any text (quotes, backslashes, control characters, non-ASCII, no reason)
    give the same hashes."""
    storage = SimulatedStorage()
    storage.make_image("/images/a.qcow2", 16 * CLUSTER, {0: 1})
    odd = [
        RecordedBy('o"brien\\', "h\u00f6st\n1", "1.0\t", None),
        RecordedBy("\u00e9\u4e2d\U0001f600", "host\x01", "", ""),
        RecordedBy("ops", "host2", "2.0", 'why "not"? \\ \u2028 \x7f'),
    ]
    app = LedgerApplication(url, recorded_by=odd[0])
    ledger = ledger_service(app, storage)
    ledger.adopt("a", {"vda": "/images/a.qcow2"})
    for n, by in enumerate(odd):
        app.recorded_by = by
        ledger.snapshot("a", f"s{n}")  # saves of one event and of several
    records = app.chain()
    assert {replace(r.recorded_by, operation=None) for r in records} == set(odd)
    assert all(r.operation for r in records)  # each command's id, hashed on the server too
    assert app.check_chain() == []
    assert [r.position for r in records] == [n for _, n in app.events_after(0)]


RACING_WRITER = """
import sys
from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.domain.errors import ConcurrentUpdate
from snapledger.domain.ledger_hash import RecordedBy

url, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
storage = SimulatedStorage()
storage.make_image(f"/images/{name}.qcow2", 16 * CLUSTER, {0: 1})
ledger = ledger_service(LedgerApplication(url, recorded_by=RecordedBy("ops", name, "t")), storage)
ledger.adopt(name, {"vda": f"/images/{name}.qcow2"})
print("ready", flush=True)
sys.stdin.readline()
for n in range(rounds):
    ledger.snapshot(name, f"s{n}")
    print(f"snapshot {name} s{n}", flush=True)
    ledger.delete(name, f"s{n}")
    print(f"delete {name} s{n}", flush=True)
    vm = ledger.vm("shared")  # every writer records on one VM too: some lose the race
    vm.record_drift([f"seen by {name} in round {n}"], at="2026-11-25T00:00:00+00:00")
    try:
        ledger.app.record(vm)
        print(f"drift shared {name}-{n}", flush=True)
    except ConcurrentUpdate:
        print("conflict", flush=True)
"""


def test_racing_writers_keep_one_whole_chain(url: str) -> None:
    """Writers in separate processes, saving as fast as they can on their own VMs and on one
    shared VM: every save each of them saw succeed is in the ledger once, the chain is whole
    and runs over every stored event, in position order."""
    storage = SimulatedStorage()
    storage.make_image("/images/shared.qcow2", 16 * CLUSTER, {0: 1})
    ledger_service(LedgerApplication(url), storage).adopt("shared", {"vda": "/images/shared.qcow2"})
    writers = [
        subprocess.Popen([sys.executable, "-c", RACING_WRITER, url, f"vm{n}", "12"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in range(6)
    ]
    for writer in writers:
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
    outputs = [writer.communicate("go\n", timeout=300) for writer in writers]
    for writer, (_, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err.strip().splitlines()[-1:]
    seen = [line for out, _ in outputs for line in out.splitlines()]
    app = LedgerApplication(url)
    assert app.check_chain() == []
    events = list(app.events_after(0))
    records = app.chain()
    assert [r.position for r in records] == [n for _, n in events]
    assert all(b.prev_hash == a.hash for a, b in zip(records, records[1:], strict=False))
    closing = {"SnapshotTaken": "snapshot", "SnapshotDeleted": "delete"}
    names = {vm_id(f"vm{n}"): f"vm{n}" for n in range(6)}
    recorded = sorted(
        f"{closing[type(e).__name__]} {names[e.originator_id]} {e.name}"  # type: ignore[attr-defined]
        for e, _ in events if type(e).__name__ in closing
    )
    assert recorded == sorted(line for line in seen if line.split()[0] in ("snapshot", "delete"))
    assert len(recorded) == 6 * 12 * 2
    drifts = sorted(
        change.removeprefix("seen by ").replace(" in round ", "-")
        for e, _ in events if type(e).__name__ == "DriftDetected"
        for change in e.findings  # type: ignore[attr-defined]
    )
    assert drifts == sorted(line.split()[2] for line in seen if line.startswith("drift"))
    assert len(drifts) + seen.count("conflict") == 6 * 12


def test_a_ledger_made_before_the_save_function_gets_it(url: str) -> None:
    """A ledger whose tables an older snapledger made has no save function: the first writer
    that opens it makes it, and the chain goes on from the records already there."""
    storage = SimulatedStorage()
    storage.make_image("/images/a.qcow2", 16 * CLUSTER, {0: 1})
    storage.make_image("/images/b.qcow2", 16 * CLUSTER, {0: 2})
    host(url, "host1", storage).adopt("a", {"vda": "/images/a.qcow2"})
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP FUNCTION {SAVE_FUNCTION}")
    later = host(url, "host2", storage)
    later.adopt("b", {"vda": "/images/b.qcow2"})  # a host changes its own VMs
    later.snapshot("b", "s1")
    assert later.app.check_chain() == []
    assert {r.host for r in later.app.chain()} == {"host1", "host2"}
