"""The persisted projection's contract, on each real store: SQLite (the ledger's file) and
PostgreSQL (a database on a private server, tests/postgres_server.py). A new process starts
from the checkpoint; what it starts from, and every archive point time travel starts from, is
exactly what a full replay builds, after random histories, a crash before the projection's
update, processes racing on it, and damage of every kind; and the position never moves back."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from projection_helpers import (
    EVERY,
    open_ledger,
    rebuilt,
    same_ledger,
    show,
    spy_reads,
    view_state,
    with_history,
)
from store_backends import Backend, PostgresBackend, SQLiteBackend

from snapledger.adapters.checkpoint import persisted as persisted_module
from snapledger.adapters.checkpoint.audit import projection_findings
from snapledger.adapters.checkpoint.codec import CheckpointCodec
from snapledger.adapters.checkpoint.fast_show import stored_show_text
from snapledger.adapters.checkpoint.memory import MemoryProjectionStore
from snapledger.adapters.checkpoint.persisted import PersistedProjection, store_for
from snapledger.adapters.checkpoint.rules import (
    BEHIND,
    CHECKPOINT,
    DAMAGED,
    DOCS,
    SAME,
    TRACKING,
    UNANCHORED,
    WRITTEN,
    Doc,
    ProjectionStore,
    Row,
    Tracking,
    Update,
    code_fingerprint,
    doc_checksum,
    row_checksum,
)
from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.domain.errors import Refused, UnknownVm
from snapledger.projections.documents import json_text, vm_document


def stored_doc(backend: Backend, url: str, vm: str) -> str | None:
    found = backend.rows(url, f"SELECT doc FROM {DOCS} WHERE vm = '{vm}'")
    return str(found[0][0]) if found else None


def stored_position(backend: Backend, url: str) -> int | None:
    found = backend.rows(url, f"SELECT position FROM {TRACKING}")
    return int(found[0][0]) if found else None


def assert_projection_is_the_ledger(backend: Backend, url: str) -> None:
    """What a new process starts from, every archive point, and the stored documents."""
    app = LedgerApplication(url)
    whole = rebuilt(app)
    last = whole.position
    projection = PersistedProjection(app, every=EVERY)
    tracking = projection.store.read_current()[1]
    assert tracking is not None and tracking.position == last
    for name in whole.vms:
        assert stored_doc(backend, url, name) == json_text(vm_document(whole, name)), name
    loaded = projection.load()
    assert loaded.position == last and view_state(loaded) == view_state(whole)
    for position in range(0, last + 1, max(1, last // 12)):
        assert same_ledger(projection.view_at(position), rebuilt(app, position))


# ---- the store --------------------------------------------------------------------------------


def test_each_store_is_its_own_kind(backend: Backend, url: str) -> None:
    store = store_for(LedgerApplication(url))
    assert type(store).__name__ == {"sqlite": "SQLiteProjectionStore", "postgresql": "PostgresProjectionStore"}[backend.name]
    assert store.persistent


def test_before_anything_is_written_a_store_reads_nothing(url: str) -> None:
    store = store_for(LedgerApplication(url))  # no tables yet: no error either
    assert store.read_current() == (0, None, [])
    assert store.read_at(5, "fp") is None
    store.wipe(None)
    assert store.read_current() == (0, None, [])


class StoreCase(NamedTuple):
    store: ProjectionStore
    last: int  # the ledger's last position
    another: Callable[[], ProjectionStore]  # a second store on the same ledger, as another process opens
    chain_hash_at: Callable[[int], str]  # the ledger's hash chain, as the anchor is taken from


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreCase:
    """A store of each kind on a ledger of a few events."""
    if request.param == "memory":
        def chain(position: int) -> str:
            return f"{position:064x}" if 0 < position <= 9 else ""

        memory = MemoryProjectionStore(lambda: 9, chain)
        return StoreCase(memory, 9, lambda: memory, chain)  # one per application: the same store
    backend = SQLiteBackend(tmp_path) if request.param == "sqlite" else PostgresBackend(
        request.getfixturevalue("postgres")
    )
    url = backend.new_url()
    ledger, _ = with_history(url)
    return StoreCase(
        store_for(ledger.app), ledger.app.last_position(), lambda: store_for(LedgerApplication(url)),
        lambda position: ledger.app.chain(position - 1, position)[0].hash,
    )


def full_update(position: int, fingerprint: str = "fp", every: int = 0, *rows: Row) -> Update:
    return Update(position, fingerprint, -1, True, list(rows), len(rows), 0, True, every)


def a_row(n: int) -> Row:
    oid, topic, state = f"{n:032x}", "t", b'{"n":%d}' % n
    return Row(oid, 1, n, topic, state, row_checksum(oid, 1, n, topic, state))


def no_docs(stored: dict[str, str], only_missing: bool) -> list[Any]:
    return []


def test_every_store_keeps_what_it_was_given(any_store: StoreCase) -> None:
    store, last, _, chain_hash_at = any_store
    row = a_row(1)
    assert store.commit(full_update(last, "fp", last - 1, row), no_docs) == WRITTEN
    anchor = chain_hash_at(last)
    assert anchor and len(anchor) == 64  # anchored to the chain's hash at that position
    assert store.read_current() == (last, Tracking(last, "fp", 1, last, anchor, 1), [row])
    assert store.read_at(last - 2, "fp") is None  # before the one archive point
    assert store.read_at(last, "fp") == (last, 1, [row])
    assert store.read_at(last, "other") is None
    assert store.commit(full_update(last), no_docs) == SAME
    assert store.commit(full_update(last - 1, "fp", 0, a_row(2)), no_docs) == BEHIND  # never back
    assert store.read_current()[1:] == (Tracking(last, "fp", 1, last, anchor, 1), [row])
    store.wipe(Tracking(last - 1, "fp", 1, last, anchor, 1))  # not what is there: kept
    assert store.read_current()[1] is not None
    store.wipe(Tracking(last, "fp", 1, last, anchor, 1))
    assert store.read_current() == (last, None, [])


def test_at_the_stored_position_only_missing_documents_are_written(any_store: StoreCase) -> None:
    """A commit at the position the store holds (commit.py's flow, the same for every store):
    with every VM's document intact it is SAME without asking for any (no write lock taken);
    with one missing, the documents are asked for again, only the missing ones, under the lock."""
    store, last = any_store.store, any_store.last
    asked: list[tuple[list[str], bool]] = []

    def docs_for(stored: dict[str, str], only_missing: bool) -> list[Doc]:
        asked.append((sorted(stored), only_missing))
        return [Doc(vm, "[]", "{}", doc_checksum(vm, "[]", "{}")) for vm in ("a", "b") if vm not in stored]

    update = full_update(last, "fp", 0, a_row(1))._replace(vms=2)
    assert store.commit(update, docs_for) == WRITTEN
    assert asked == [([], False)]
    asked.clear()
    assert store.commit(update, docs_for) == SAME
    assert asked == []
    assert store.commit(update._replace(vms=3), docs_for) == SAME
    assert asked == [(["a", "b"], True)]


def test_time_travel_reads_the_newest_row_of_each_aggregate_at_the_archive_point(
    any_store: StoreCase,
) -> None:
    store = any_store.store
    one, two, three = a_row(1), a_row(2), a_row(3)
    store.commit(full_update(2, "fp", 2, one, two), no_docs)  # archive point 2: one v1, two v1
    one_v2 = one._replace(version=2, checksum=row_checksum(one.originator_id, 2, 1, "t", one.state))
    dirty = Update(4, "fp", 2, False, [one_v2, three], 3, 0, True, 2)
    assert store.commit(dirty, no_docs) == WRITTEN  # archive point 4: one v2, two v1, three v1
    store.commit(Update(5, "fp", 4, False, [], 3, 0, True, 2), no_docs)  # current, not archived
    assert store.read_at(3, "fp") == (2, 2, [one, two])
    assert store.read_at(4, "fp") == (4, 3, [one_v2, two, three])
    assert store.read_at(5, "fp") == (5, 3, [one_v2, two, three])
    assert store.read_at(1, "fp") is None


def test_a_hand_edited_tracking_row_reads_as_damaged(backend: Backend, url: str) -> None:
    ledger, _ = with_history(url)
    assert backend.sql(url, f"UPDATE {TRACKING} SET aggregates = aggregates + 1") == 1
    tracking = store_for(LedgerApplication(url)).read_current()[1]
    assert tracking is not None and tracking.fingerprint == DAMAGED


def test_a_commit_waits_for_the_one_in_progress_and_never_moves_the_position_back(
    any_store: StoreCase,
) -> None:
    """Two writers on two connections, as two processes have: the first is held inside its
    transaction (after it read the tracking row) while the second, at an earlier position,
    begins. Unless the second waits for the first to commit before it reads the tracking row
    itself, it writes its earlier position over the later one."""
    store, other = any_store.store, any_store.another()
    inside, release = threading.Event(), threading.Event()
    outcomes: dict[int, str] = {}

    def held(stored: dict[str, str], only_missing: bool) -> list[Any]:
        inside.set()
        assert release.wait(30)
        return []

    def commit(on: ProjectionStore, position: int, docs_for: Any) -> None:
        outcomes[position] = on.commit(full_update(position, "fp", 0, a_row(position)), docs_for)

    later = threading.Thread(target=commit, args=(store, 20, held))
    later.start()
    assert inside.wait(30)
    earlier = threading.Thread(target=commit, args=(other, 10, no_docs))
    earlier.start()
    earlier.join(0.5)  # it has read what it reads before waiting, if it does not wait first
    release.set()
    later.join(30)
    earlier.join(30)
    assert outcomes == {20: WRITTEN, 10: BEHIND}
    tracking, rows = store.read_current()[1:]
    assert tracking is not None and tracking.position == 20 and rows == [a_row(20)]


# ---- the projection on the store ----------------------------------------------------------


def test_a_new_process_starts_from_the_checkpoint_and_gets_what_a_replay_builds(
    backend: Backend, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, storage = with_history(url)
    app = LedgerApplication(url)
    last = app.last_position()
    assert stored_position(backend, url) == last
    starts = spy_reads(app, monkeypatch)
    view = ledger_service(app, storage).view
    assert starts and min(starts) == last  # only what follows the checkpoint was read
    assert same_ledger(view, rebuilt(app))


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


# The fixture is a factory: each example makes a ledger of its own.
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(steps=commands)
def test_after_random_histories_the_persisted_projection_is_the_ledger(
    backend: Backend, steps: list[tuple[str, str, int, str]],
) -> None:
    url = backend.new_url()
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
    assert_projection_is_the_ledger(backend, url)


# ---- a process dies between its save and the projection's update -----------------------------

CHILD = textwrap.dedent(
    """
    import os, sys
    from snapledger.adapters.eventstore.application import LedgerApplication
    from snapledger.adapters.checkpoint.persisted import PersistedProjection
    from snapledger.adapters.compose import ledger_service
    from snapledger.adapters.storage.simulated import CLUSTER, SimulatedStorage

    url, name, count, crash = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "crash"
    storage = SimulatedStorage()
    disk = f"/images/{name}.qcow2"
    storage.make_image(disk, 16 * CLUSTER, {0: 1})
    app = LedgerApplication(url)
    ledger = ledger_service(app, storage, projection=PersistedProjection(app, every=7))
    ledger.adopt(name, {"vda": disk})
    for n in range(count):
        ledger.snapshot(name, f"s{n}")
        ledger = ledger_service(app, storage, projection=PersistedProjection(app, every=7))
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


def test_a_process_killed_between_its_save_and_the_projection_update_harms_nothing(
    backend: Backend, url: str
) -> None:
    dead = child(url, "vm", 3, crash=True)
    _, err = dead.communicate(timeout=120)
    assert dead.returncode == 9, err
    position = stored_position(backend, url)
    assert position is not None and position < LedgerApplication(url).last_position()
    assert stored_show_text(url, "vm") is None  # so show does not answer from it
    shown = json.loads(show(url, "vm", "--json").stdout)  # catches up and saves
    assert "last" in {s["name"] for s in shown["snapshots"]}
    assert stored_doc(backend, url, "vm") == json.dumps(shown, indent=2)
    assert view_state(PersistedProjection(LedgerApplication(url)).load()) == view_state(
        rebuilt(LedgerApplication(url))
    )


# ---- processes racing on the projection --------------------------------------------------------


def test_processes_racing_on_the_projection_leave_it_equal_to_the_ledger(backend: Backend, url: str) -> None:
    # on an empty database: the processes also race to create the tables
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
        assert stored_doc(backend, url, name) == json_text(vm_document(whole, name))
    for position in range(0, whole.position + 1, 5):
        assert same_ledger(projection.view_at(position), rebuilt(app, position))


def test_a_process_behind_never_moves_the_position_back(backend: Backend, url: str) -> None:
    ledger, storage = with_history(url)
    behind = open_ledger(url, storage)
    behind.view  # noqa: B018 (loaded at the current position)
    ahead = open_ledger(url, storage)
    ahead.snapshot("b", "t2")
    saved = stored_position(backend, url)
    behind.view.dirty.add(next(iter(behind.view.aggregates())))
    assert behind.projection.save(behind.view) == BEHIND
    assert stored_position(backend, url) == saved
    behind.snapshot("a", "s9")  # catches up past the other's save, then saves over it
    assert_projection_is_the_ledger(backend, url)


# ---- damage -------------------------------------------------------------------------------------

VM_A_CURRENT, FORGED_CURRENT = '"current":"s2"', '"current":"s3"'


def edit_the_state(backend: Backend) -> str:
    expression = backend.edited_state.format(old=VM_A_CURRENT, new=FORGED_CURRENT)
    return f"UPDATE {CHECKPOINT} SET state = {expression} WHERE state <> {expression}"


DAMAGE = {
    "a row's state edited": edit_the_state,
    "a row deleted": lambda _: f"DELETE FROM {CHECKPOINT} WHERE originator_id = "
    f"(SELECT MAX(originator_id) FROM {CHECKPOINT})",
    "the position moved ahead": lambda _: f"UPDATE {TRACKING} SET position = position + 100",
    "the position moved back": lambda _: f"UPDATE {TRACKING} SET position = position - 4",
    "a document forged": lambda _: f"UPDATE {DOCS} SET doc = replace(doc, '\"s2\"', '\"s3\"')",
    "the tracking table of another shape": lambda _: f"DROP TABLE {TRACKING}; "
    f"CREATE TABLE {TRACKING} (name TEXT, position INTEGER)",
    "the checkpoint table dropped": lambda _: f"DROP TABLE {CHECKPOINT}",
    "the tables of an older code's shape": lambda _: f"DROP TABLE {TRACKING}; DROP TABLE {CHECKPOINT}; "
    f"CREATE TABLE {TRACKING} (name TEXT PRIMARY KEY, position INTEGER, fingerprint TEXT); "
    f"CREATE TABLE {CHECKPOINT} (originator_id TEXT PRIMARY KEY, born INTEGER)",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_projection_is_rebuilt_and_never_changes_what_show_says(
    backend: Backend, url: str, damage: str
) -> None:
    ledger, storage = with_history(url)
    expected = json_text(vm_document(rebuilt(ledger.app), "a")) + "\n"
    backend.sql(url, DAMAGE[damage](backend))
    assert stored_show_text(url, "a") in (None, expected[:-1])
    assert show(url, "a", "--json").stdout == expected
    assert show(url, "a", "--json").stdout == expected
    open_ledger(url, storage).view  # noqa: B018 (a new process: rebuilt if what it loads is damaged)
    top, tracking, rows = store_for(LedgerApplication(url)).read_current(live_only=True)
    assert tracking is not None and (tracking.position, tracking.live_rows) == (top, len(rows))
    # A registration no VM uses is never read from the checkpoint by a process (it is looked up
    # in the events); damage there is found, and the projection dropped, by verify.
    projection_findings(PersistedProjection(LedgerApplication(url)))
    open_ledger(url, storage).view  # noqa: B018
    assert_projection_is_the_ledger(backend, url)


def test_a_row_whose_state_was_edited_is_found_and_the_view_folded_from_the_events(
    backend: Backend, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, storage = with_history(url)
    assert backend.sql(url, edit_the_state(backend)) == 1  # VM a's row only
    app = LedgerApplication(url)
    starts = spy_reads(app, monkeypatch)
    view = ledger_service(app, storage).view
    assert starts[0] == 0  # the checkpoint was not trusted
    assert view.vms["a"].current == "s2" and same_ledger(view, rebuilt(app))
    assert_projection_is_the_ledger(backend, url)  # and it was written anew


def test_a_checkpoint_the_hash_chain_no_longer_vouches_for_is_rebuilt_not_used(
    backend: Backend, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tracking row names the chain's hash at its position: events rewritten under it (the
    chain recomputed, or another history at the same positions) leave it unanchored."""
    _, storage = with_history(url)
    app = LedgerApplication(url)
    last = app.last_position()
    tracking = store_for(app).read_tracking()
    assert tracking is not None and tracking.position == last
    assert tracking.anchor == app.chain(last - 1, last)[0].hash
    backend.sql(url, f"UPDATE snapledger_chain SET hash = '{'f' * 64}' WHERE position = {last}")
    assert (store_for(app).read_tracking() or tracking).fingerprint == UNANCHORED
    assert stored_show_text(url, "a") is None  # show's fast path does not trust it either
    starts = spy_reads(app, monkeypatch)
    view = ledger_service(app, storage).view
    assert starts[0] == 0  # folded from the first event
    assert same_ledger(view, rebuilt(app))
    again = store_for(app).read_tracking()
    assert again is not None and again.anchor == "f" * 64 and again.fingerprint == code_fingerprint()


def test_a_checkpoint_other_code_wrote_is_rebuilt_never_decoded(
    backend: Backend, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, storage = with_history(url)
    backend.sql(url, f"UPDATE {CHECKPOINT} SET topic = 'old.module:OldSnapshot'")  # not decodable here
    app = LedgerApplication(url)
    store = store_for(app)
    tracking = store.read_tracking()
    assert tracking is not None
    monkeypatch.setattr(persisted_module, "code_fingerprint", lambda: "2:newer")
    decoded: list[object] = []
    monkeypatch.setattr(CheckpointCodec, "aggregate", lambda self, row: decoded.append(row))
    projection = PersistedProjection(app)
    assert projection.fingerprint == "2:newer" and projection.load().position == 0  # dropped
    assert decoded == []
    monkeypatch.undo()
    view = ledger_service(app, storage).view
    assert same_ledger(view, rebuilt(app))


def test_on_postgresql_a_save_held_up_past_the_lock_timeout_fails_harmlessly(postgres: str) -> None:
    """Another writer holds the lock (a stuck process): the save gives up after the store's
    lock timeout instead of hanging the command, and the next reader catches up."""
    from snapledger.adapters.checkpoint.postgres import LOCK_CLASS, PostgresProjectionStore

    url = PostgresBackend(postgres).new_url()
    ledger, storage = with_history(url)
    app = LedgerApplication(url)
    store = PostgresProjectionStore.of(app)
    store.lock_timeout_ms = 200
    projection = PersistedProjection(app, store=store, every=EVERY)
    view = projection.present()
    ledger.projection.save = lambda *_, **__: "not saved"  # type: ignore[method-assign]
    ledger.snapshot("b", "t2")  # recorded; the projection is behind it
    saved = store.read_current()[1]
    assert saved is not None and saved.position < app.last_position()
    with psycopg.connect(url, autocommit=True) as stuck:
        stuck.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, store.lock_key))
        projection.catch_up(view)
        assert projection.save(view) == "failed"
        assert store.read_current()[1] == saved
    later = open_ledger(url, storage).view
    assert same_ledger(later, rebuilt(app))




def test_an_aggregate_looked_up_by_a_lazy_view_is_born_where_its_first_event_is(url: str) -> None:
    # A lazy view's lookup must give the position of the aggregate's first event, as a fold
    # does: a looked-up registration that then changes is written into the checkpoint with it.
    assert_lookups_are_born_where_folds_are(url)


def test_in_memory_too_a_looked_up_aggregate_is_born_where_its_first_event_is() -> None:
    assert_lookups_are_born_where_folds_are("memory://")


def assert_lookups_are_born_where_folds_are(url: str) -> None:
    app = with_history(url)[0].app  # its delete of s1 left a registration no VM uses
    whole = rebuilt(app)
    assert any(not r.live for r in whole.registrations.values())
    projection = PersistedProjection(app, every=EVERY)
    for aggregate_id, born in whole.born.items():
        found = projection.recorded(aggregate_id)
        assert found is not None and found[1] == born


def test_a_show_far_from_any_checkpoint_reads_the_vm_alone(
    backend: Backend, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a long ledger with no checkpoint near its end (a first start, an upgrade), `show`
    reads the VM and the VMs sharing its images from their own events instead of folding
    every event; what it says is what the folded ledger says."""
    with_history(url)
    backend.sql(url, f"DROP TABLE {TRACKING}")  # as before any checkpoint was written
    app = LedgerApplication(url)
    whole = rebuilt(app)
    projection = PersistedProjection(app, every=EVERY)
    projection.far = 0
    starts = spy_reads(app, monkeypatch)
    for name in whole.vms:
        one = projection.view_of_one(name)
        assert one is not None and vm_document(one, name) == vm_document(whole, name)
        assert set(one.vms) <= set(whole.vms)
    assert starts == []  # no event was read in order: each aggregate from its own stream
    with pytest.raises(UnknownVm):
        projection.view_of_one("nobody")
    projection.far = 20_000  # a short ledger: catching up is cheaper
    assert projection.view_of_one("a") is None
