"""The shared PostgreSQL store: two hosts on one ledger, one hash chain, and tampering found."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
from snapledger.domain.errors import ConcurrentUpdate
from snapledger.domain.ledger_hash import RecordedBy


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
