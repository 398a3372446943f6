"""The SQLite store: events outlive the process, and two processes racing on one file conflict."""

from __future__ import annotations

import copy
import gc
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from ledger_fakes import OtherProcessActsAfterLoad

from snapledger.adapters.checkpoint.persisted import PersistedProjection
from snapledger.adapters.compose import ledger_service, open_store
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import ConcurrentUpdate, OperationInProgress, SnapledgerError
from snapledger.projections.view import LedgerView

VM = "vm"
BASE = "/images/base.qcow2"
VSIZE = 64 * CLUSTER


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/l.sqlite"


@pytest.fixture
def storage() -> SimulatedStorage:
    """One host's disks, seen by every process of the test."""
    storage = SimulatedStorage()
    storage.make_image(BASE, VSIZE, {0: 0x10})
    return storage


def open_ledger(url: str, storage: SimulatedStorage) -> Snapledger:
    """What a new process does: its own application object on the same file."""
    return ledger_service(LedgerApplication(url), storage)


def racing_ledger(url: str, storage: SimulatedStorage, winner_acts: Callable[[], object]) -> Snapledger:
    """A process whose first load of the VM is followed at once by another process's command."""
    app = LedgerApplication(url)
    projection = OtherProcessActsAfterLoad(PersistedProjection(app), winner_acts)
    return ledger_service(app, storage, projection=projection)  # type: ignore[arg-type]


def with_snapshots(url: str, storage: SimulatedStorage) -> Snapledger:
    ledger = open_ledger(url, storage)
    ledger.adopt(VM, {"vda": BASE})
    for n in (1, 2, 3):
        ledger.snapshot(VM, f"s{n}")
        storage.write(ledger.vm(VM).disks["vda"], n, 0x20 + n)
    return ledger


def events(ledger: Snapledger) -> list[str]:
    return [type(e).__qualname__ for e, _ in ledger.app.events_after(0)]


def test_events_persist_across_application_instances(
    url: str, storage: SimulatedStorage, tmp_path: Path
) -> None:
    first = with_snapshots(url, storage)
    first.revert(VM, "s2")
    recorded = events(first)
    assert (tmp_path / "l.sqlite").exists()
    del first

    second = open_ledger(url, storage)
    assert events(second) == recorded
    vm = second.vm(VM)
    assert set(vm.snapshots) == {"s1", "s2", "s3"} and vm.current == "s2"
    assert vm.disks["vda"] == "/images/base.s2-1"
    rebuilt = LedgerView()
    rebuilt.apply_all(second.app.events_after(0))
    assert rebuilt.canonical() == second.view.canonical()
    second.delete(VM, "s1")  # and it carries on from there
    assert "s1" not in open_ledger(url, storage).vm(VM).snapshots


def test_two_processes_racing_on_one_delete_conflict_and_act_once(
    url: str, storage: SimulatedStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner = with_snapshots(url, storage)
    # the loser has loaded the VM and will plan on this version when the winner saves first
    loser = racing_ledger(url, storage, lambda: winner.delete(VM, "s2", strategy="commit"))
    written = storage.bytes_written
    with pytest.raises(ConcurrentUpdate) as caught:
        loser.delete(VM, "s2", strategy="commit")
    assert caught.value.exit_code == 4
    assert storage.bytes_written - written == CLUSTER  # base.s2's one cluster, committed once
    recorded = events(open_ledger(url, storage))
    assert recorded.count("VirtualMachine.SnapshotDeleted") == 1
    assert recorded.count("VirtualMachine.OperationStarted") == 4  # 3 snapshots, 1 delete
    vm = open_ledger(url, storage).vm(VM)
    assert vm.operation is None and set(vm.snapshots) == {"s1", "s3"}
    assert storage.read_all(vm.snapshots["s3"].disks["vda"]) == {0: 0x10, 1: 0x21, 2: 0x22}


def test_a_delete_planned_before_another_process_snapshot_conflicts(
    url: str, storage: SimulatedStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stale plan would commit base.s3 into base.s2 and delete it: base.s3 now holds s4."""
    winner = with_snapshots(url, storage)
    loser = racing_ledger(url, storage, lambda: winner.snapshot(VM, "s4"))
    files = copy.deepcopy(storage.files)
    before = events(winner)
    with pytest.raises(ConcurrentUpdate) as caught:
        loser.delete(VM, "s3", strategy="commit")
    assert caught.value.exit_code == 4
    after = events(open_ledger(url, storage))
    assert after[: len(before)] == before
    new = after[len(before):]  # the winner's snapshot, nothing of the loser's delete
    assert new.count("VirtualMachine.OperationStarted") == 1
    assert new.count("VirtualMachine.SnapshotTaken") == 1
    assert "VirtualMachine.SnapshotDeleted" not in new
    assert set(storage.files) == set(files) | {"/images/base.s4"}
    assert all(storage.files[p].clusters == files[p].clusters for p in files)
    vm = open_ledger(url, storage).vm(VM)
    assert vm.operation is None and set(vm.snapshots) == {"s1", "s2", "s3", "s4"}
    assert storage.read_all(vm.snapshots["s4"].disks["vda"]) == {
        0: 0x10, 1: 0x21, 2: 0x22, 3: 0x23
    }


def test_an_operation_left_open_by_a_crash_holds_off_other_processes(
    url: str, storage: SimulatedStorage
) -> None:
    first = with_snapshots(url, storage)
    storage.inject(crash_at=1)
    with pytest.raises(SimulatedCrash):
        first.delete(VM, "s2", strategy="commit")
    other = open_ledger(url, storage)
    with pytest.raises(OperationInProgress) as caught:
        other.snapshot(VM, "s4")
    assert caught.value.exit_code == 4
    assert other.recover() != []
    assert "s2" not in other.vm(VM).snapshots
    other.snapshot(VM, "s4")


def test_adopting_an_image_another_vms_operation_reserved_conflicts(
    url: str, storage: SimulatedStorage
) -> None:
    first = with_snapshots(url, storage)
    storage.inject(crash_at=3)  # delete s2 by commit: commit, rebase base.s3, then crash at delete
    with pytest.raises(SimulatedCrash):
        first.delete(VM, "s2", strategy="commit")
    # meanwhile someone builds a second VM on base.s2, which that operation is about to delete
    storage.make_image("/images/other.qcow2", VSIZE, {9: 0x99}, backing="/images/base.s2")
    other = open_ledger(url, storage)
    before = events(other)
    files = copy.deepcopy(storage.files)
    with pytest.raises(ConcurrentUpdate) as caught:
        other.adopt("other", {"vda": "/images/other.qcow2"})
    assert caught.value.exit_code == 4
    assert "/images/base.s2" in str(caught.value)
    assert events(other) == before and storage.files == files
    assert "other" not in other.refresh().vms

    # other.qcow2, a file the ledger does not know, now rests on base.s2: recover won't delete
    # it under that file (exit 3) until the user has taken the file away
    with pytest.raises(SnapledgerError) as refused:
        other.recover()
    assert refused.value.exit_code == 3 and "/images/other.qcow2" in str(refused.value)
    assert storage.files["/images/base.s2"].clusters == files["/images/base.s2"].clusters
    storage.delete("/images/other.qcow2")
    other.recover()
    vm = other.vm(VM)
    assert vm.operation is None and "/images/base.s2" not in storage.files
    assert storage.read_all(vm.snapshots["s3"].disks["vda"]) == {0: 0x10, 1: 0x21, 2: 0x22}
    assert storage.read_all(vm.disks["vda"]) == {0: 0x10, 1: 0x21, 2: 0x22, 3: 0x23}


# A second process: opens the ledger, records one VM and closes it (SQLite checkpoints the WAL
# and removes it on the last close, if no other process holds a lock on the file).
OTHER_PROCESS = """
import sys
from snapledger.adapters.compose import ledger_service, open_store
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage
storage = SimulatedStorage()
storage.make_image("/images/other.qcow2", 64 * CLUSTER, {0: 0x30})
with ledger_service(open_store(sys.argv[1]), storage) as ledger:
    ledger.adopt("other", {"vda": "/images/other.qcow2"})
"""


def test_opening_a_ledger_again_in_one_process_leaves_its_locks_alone(
    url: str, storage: SimulatedStorage
) -> None:
    """Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
    included. The store's probe read the file's header with a plain open() and close(): done
    while this process had the ledger open already, it let another process take the file for
    itself and remove the WAL under it ('database disk image is malformed' at the next save)."""
    first = ledger_service(open_store(url), storage)
    first.adopt(VM, {"vda": BASE})
    first.snapshot(VM, "s1")
    again = open_store(url)  # the probe, while `first` holds the file
    done = subprocess.run([sys.executable, "-c", OTHER_PROCESS, url], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    first.snapshot(VM, "s2")
    assert [s for s in first.vm(VM).snapshots] == ["s1", "s2"]
    assert "other" in first.refresh().vms
    again.close()
    first.close()


def test_a_service_dropped_without_close_lets_go_of_the_ledger_at_once(
    url: str, storage: SimulatedStorage
) -> None:
    """As before the service had ports: dropping the last reference to it closes its own
    connections (reference counting; the cycle collector is kept out of it), so the file can be
    taken by another connection right away."""
    gc.disable()
    try:
        ledger = open_ledger(url, storage)
        ledger.adopt(VM, {"vda": BASE})
        ledger.snapshot(VM, "s1")
        ledger.app.close()  # the event store's own pool is eventsourcing's to close
        del ledger
        con = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0)
        try:
            assert con.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
        finally:
            con.close()
    finally:
        gc.enable()


def test_a_ledger_made_before_operations_gets_the_column_and_still_verifies(url: str, storage: SimulatedStorage, tmp_path: Path) -> None:
    """An older ledger: the chain table has no `operation` column and its records none. The
    first writer adds the column; the old records keep their hashes, new ones carry their ids."""
    path = tmp_path / "l.sqlite"
    con = sqlite3.connect(path)
    con.execute(  # the chain table as the version before operations made it
        "CREATE TABLE snapledger_chain (position INTEGER PRIMARY KEY, event_digest TEXT NOT NULL, "
        "prev_hash TEXT NOT NULL, hash TEXT NOT NULL, actor TEXT NOT NULL, host TEXT NOT NULL, "
        "tool_version TEXT NOT NULL, reason TEXT)"
    )
    con.close()
    app = LedgerApplication(url)
    ledger = ledger_service(app, storage)
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(snapledger_chain)")]
    assert columns[-1] == "operation"
    ledger.adopt(VM, {"vda": BASE})
    ledger.snapshot(VM, "s1")
    assert not app.check_chain()
    operations = [record.operation for record in app.chain()]
    assert all(op is not None for op in operations) and len(set(operations)) == 2
    assert ledger.recorded_operations()[-1] == (operations[-1], app.last_position())


def test_two_processes_adding_the_operation_column_at_once_both_start(tmp_path: Path) -> None:
    """Both looked before either altered: the second's ALTER finds the column there already."""
    from snapledger.adapters.eventstore.chain import add_operation_column

    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("CREATE TABLE snapledger_chain (position INTEGER PRIMARY KEY, reason TEXT)")
    stale = con.execute("PRAGMA table_info(snapledger_chain)").fetchall()  # the late one's look
    add_operation_column(con.cursor())  # the first process

    class LookedEarlier:
        def __init__(self) -> None:
            self.cursor, self.rows = con.cursor(), stale

        def execute(self, sql: str) -> None:
            if not sql.startswith("PRAGMA"):
                self.cursor.execute(sql)

        def fetchall(self) -> list[object]:
            return self.rows

    add_operation_column(LookedEarlier())
    assert [row[1] for row in con.execute("PRAGMA table_info(snapledger_chain)")] == ["position", "reason", "operation"]
