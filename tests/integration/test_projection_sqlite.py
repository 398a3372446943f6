"""The persisted projection in a real SQLite ledger file: equal to a full replay after random
histories, harmless when a process dies before updating it, safe when processes race on it,
never trusted when damaged; and `show` prints the same from it as from the folded ledger."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projection_helpers import rebuilt, view_state

from snapledger.adapters.event_store import LedgerApplication
from snapledger.adapters.projection import PersistedProjection
from snapledger.adapters.projection_store import (
    BEHIND,
    CHECKPOINT,
    DOCS,
    TRACKING,
    stored_show_text,
)
from snapledger.adapters.service import Snapledger
from snapledger.adapters.simulated_storage import CLUSTER, SimulatedStorage
from snapledger.domain.errors import Refused
from snapledger.projections.documents import json_text, vm_document

CLI = [sys.executable, "-m", "snapledger.adapters.cli"]
EVERY = 3


def open_ledger(url: str, storage: SimulatedStorage, every: int = EVERY) -> Snapledger:
    """A new process on the ledger file (and on the one simulated host)."""
    app = LedgerApplication(url)
    return Snapledger(app, storage, projection=PersistedProjection(app, every=every))


def with_history(url: str) -> tuple[Snapledger, SimulatedStorage]:
    storage = SimulatedStorage()
    storage.make_image("/images/a.qcow2", 16 * CLUSTER, {0: 1})
    storage.make_image("/images/b.qcow2", 16 * CLUSTER, {0: 2})
    ledger = open_ledger(url, storage)
    ledger.adopt("a", {"vda": "/images/a.qcow2"})
    ledger.adopt("b", {"vda": "/images/b.qcow2"})
    for n in range(1, 4):
        ledger.snapshot("a", f"s{n}", description=f"snapshot {n}")
        storage.write(ledger.vm("a").disks["vda"], n, 0x30 + n)
    ledger.snapshot("b", "t1")
    ledger.revert("a", "s2")
    ledger.delete("a", "s1")
    return ledger, storage


def assert_projection_is_the_ledger(url: str, storage: SimulatedStorage) -> None:
    """What a new process starts from, every archive point, and the stored documents."""
    app = LedgerApplication(url)
    whole = rebuilt(app)
    last = whole.position
    projection = PersistedProjection(app, every=EVERY)
    tracking = projection.store.read_current()[1]
    assert tracking is not None and tracking.position == last
    for name in whole.vms:
        assert stored_show_text(url, name) == json_text(vm_document(whole, name)), name
    loaded = projection.load()
    assert loaded.position == last and view_state(loaded) == view_state(whole)
    for position in range(0, last + 1, max(1, last // 12)):
        assert view_state(projection.view_at(position)) == view_state(rebuilt(app, position))


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/ledger.sqlite"


def sql(url: str, statement: str, *params: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(url[len("sqlite:///") :]) as con:
        return con.execute(statement, params).fetchall()


# ---- random histories ------------------------------------------------------------------------

commands = st.lists(
    st.tuples(
        st.sampled_from(["snapshot", "revert", "delete", "fail", "write"]),
        st.sampled_from(["a", "b"]),
        st.integers(0, 20),
        st.sampled_from(["auto", "commit", "pull"]),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands)
def test_after_random_histories_the_persisted_projection_is_the_ledger(
    steps: list[tuple[str, str, int, str]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/ledger.sqlite"
        ledger, storage = with_history(url)
        names = itertools.count(10)
        for kind, vm, pick, strategy in steps:
            if kind != "write":
                ledger = open_ledger(url, storage)  # each command in a new process
            snapshots = sorted(ledger.view.vms[vm].snapshots)
            target = snapshots[pick % len(snapshots)] if snapshots else None
            try:
                if ledger.view.vms[vm].operation is not None:
                    ledger.recover(vm)
                elif kind == "snapshot":
                    ledger.snapshot(vm, f"s{next(names)}")
                elif kind == "revert" and target:
                    ledger.revert(vm, target)
                elif kind == "delete" and target:
                    ledger.delete(vm, target, strategy=strategy, branches="keep")
                elif kind == "fail" and target:
                    storage.inject(fail_at=1 + pick % 3)
                    ledger.delete(vm, target, strategy=strategy, branches="keep")
                elif kind == "write":
                    storage.write(ledger.view.vms[vm].disks["vda"], pick % 16, 0x40 + pick)
            except Refused:
                pass
            except Exception as error:  # a storage failure injected above
                if "injected" not in str(error) and "simulated" not in str(error).lower():
                    raise
            finally:
                storage.inject()
        open_ledger(url, storage).checkpoint()
        assert_projection_is_the_ledger(url, storage)


# ---- show: the fast path and the folded ledger print the same --------------------------------


def show(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SNAPLEDGER_STORE": url, "COLUMNS": "120"}
    done = subprocess.run([*CLI, "show", *args], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("as_json", [True, False])
def test_show_prints_the_same_from_the_projection_and_from_the_folded_ledger(
    url: str, as_json: bool
) -> None:
    with_history(url)
    args = ("a", "--json") if as_json else ("a",)
    assert stored_show_text(url, "a") is not None
    fast = show(url, *args).stdout
    sql(url, f"DELETE FROM {DOCS} WHERE vm = 'a'")
    assert stored_show_text(url, "a") is None
    slow = show(url, *args).stdout  # folds (from the checkpoint) and stores the document again
    assert stored_show_text(url, "a") is not None
    assert fast == slow == show(url, *args).stdout
    if as_json:
        assert json.loads(fast)["current"] == "s2"
    else:
        assert "VM a  current: s2" in fast


def test_show_works_without_the_documents_table_and_says_what_the_ledger_says(url: str) -> None:
    ledger, _ = with_history(url)
    expected = json_text(vm_document(rebuilt(ledger.app), "a")) + "\n"
    sql(url, f"DROP TABLE {DOCS}")
    assert stored_show_text(url, "a") is None
    assert show(url, "a", "--json").stdout == expected
    assert stored_show_text(url, "a") == expected[:-1]  # and the next show is fast again


def test_show_of_an_unknown_vm_is_the_usual_error(url: str) -> None:
    with_history(url)
    env = {**os.environ, "SNAPLEDGER_STORE": url}
    done = subprocess.run([*CLI, "show", "nope", "--json"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode != 0 and done.stderr.startswith("snapledger: error: no VM named 'nope'")


# ---- a process dies between its save and the projection's update -----------------------------

CHILD = textwrap.dedent(
    """
    import os, sys
    from snapledger.adapters.event_store import LedgerApplication
    from snapledger.adapters.projection import PersistedProjection
    from snapledger.adapters.service import Snapledger
    from snapledger.adapters.simulated_storage import CLUSTER, SimulatedStorage

    url, name, count, crash = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "crash"
    storage = SimulatedStorage()
    disk = f"/images/{name}.qcow2"
    storage.make_image(disk, 16 * CLUSTER, {0: 1})
    app = LedgerApplication(url)
    ledger = Snapledger(app, storage, projection=PersistedProjection(app, every=7))
    ledger.adopt(name, {"vda": disk})
    for n in range(count):
        ledger.snapshot(name, f"s{n}")
        ledger = Snapledger(app, storage, projection=PersistedProjection(app, every=7))
        ledger.view  # a new process: loads the projection, catches up, saves
    if crash:
        save = ledger.projection.save
        def die(view, docs=True):
            if docs:  # the command's last update (not an archive point on the way)
                os._exit(9)  # the process dies: nothing after the events' save runs
            return save(view, docs)
        ledger.projection.save = die
        ledger.snapshot(name, "last")
    """
)


def child(url: str, name: str, count: int, crash: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, name, str(count), "crash" if crash else "live"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_a_process_killed_between_its_save_and_the_projection_update_harms_nothing(url: str) -> None:
    dead = child(url, "vm", 3, crash=True)
    _, err = dead.communicate(timeout=120)
    assert dead.returncode == 9, err
    (position,), = sql(url, f"SELECT position FROM {TRACKING}")
    (last,), = sql(url, "SELECT MAX(rowid) FROM stored_events")
    assert position < last  # the snapshot "last" is recorded, the projection is behind
    assert stored_show_text(url, "vm") is None  # so show does not answer from it
    shown = json.loads(show(url, "vm", "--json").stdout)  # catches up and saves
    assert "last" in {s["name"] for s in shown["snapshots"]}
    assert stored_show_text(url, "vm") == json.dumps(shown, indent=2)
    assert view_state(PersistedProjection(LedgerApplication(url)).load()) == view_state(
        rebuilt(LedgerApplication(url))
    )


# ---- processes racing on the projection --------------------------------------------------------


def test_processes_racing_on_the_projection_leave_it_equal_to_the_ledger(url: str) -> None:
    racers = [child(url, f"vm{n}", 6) for n in range(4)]
    for racer in racers:
        _, err = racer.communicate(timeout=300)
        assert racer.returncode == 0, err
    app = LedgerApplication(url)
    whole = rebuilt(app)
    assert set(whole.vms) == {"vm0", "vm1", "vm2", "vm3"}
    projection = PersistedProjection(app, every=7)
    tracking = projection.store.read_current()[1]
    assert tracking is not None and tracking.position == whole.position
    assert view_state(projection.load()) == view_state(whole)
    for name in whole.vms:
        assert stored_show_text(url, name) == json_text(vm_document(whole, name))
    for position in range(0, whole.position + 1, 5):
        assert view_state(projection.view_at(position)) == view_state(rebuilt(app, position))


def test_a_process_behind_never_moves_the_position_back(url: str) -> None:
    ledger, storage = with_history(url)
    behind = open_ledger(url, storage)
    behind.view  # noqa: B018 (loaded at the current position)
    ahead = open_ledger(url, storage)
    ahead.snapshot("b", "t2")
    (saved,), = sql(url, f"SELECT position FROM {TRACKING}")
    behind.view.dirty.add(next(iter(behind.view.aggregates())))
    assert behind.projection.save(behind.view) == BEHIND
    assert sql(url, f"SELECT position FROM {TRACKING}") == [(saved,)]
    behind.snapshot("a", "s9")  # catches up past the other's save, then saves over it
    assert_projection_is_the_ledger(url, storage)


# ---- damage -------------------------------------------------------------------------------------

DAMAGE = {
    "a row's state edited": f"UPDATE {CHECKPOINT} SET state = CAST(replace(CAST(state AS TEXT), "
    "'\"current\":\"s2\"', '\"current\":\"s3\"') AS BLOB)",
    "a row deleted": f"DELETE FROM {CHECKPOINT} WHERE rowid = (SELECT MAX(rowid) FROM {CHECKPOINT})",
    "the position moved ahead": f"UPDATE {TRACKING} SET position = position + 100",
    "the position moved back": f"UPDATE {TRACKING} SET position = position - 4",
    "a document forged": f"UPDATE {DOCS} SET doc = replace(doc, '\"s2\"', '\"s3\"')",
    "the tracking table of another shape": f"DROP TABLE {TRACKING}; CREATE TABLE {TRACKING} (name TEXT, position INTEGER)",
    "the checkpoint table dropped": f"DROP TABLE {CHECKPOINT}",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_projection_is_rebuilt_and_never_changes_what_show_says(url: str, damage: str) -> None:
    ledger, storage = with_history(url)
    expected = json_text(vm_document(rebuilt(ledger.app), "a")) + "\n"
    with sqlite3.connect(url[len("sqlite:///") :]) as con:
        con.executescript(DAMAGE[damage])
    assert stored_show_text(url, "a") in (None, expected[:-1])
    assert show(url, "a", "--json").stdout == expected
    assert show(url, "a", "--json").stdout == expected
    open_ledger(url, storage).view  # noqa: B018 (a process that needs the whole view: rebuilt if damaged)
    assert_projection_is_the_ledger(url, storage)
