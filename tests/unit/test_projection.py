"""The persisted projection on the memory store: a new process starts from the checkpoint, not
from position 0, and what it starts from is exactly what a full replay builds, whatever
happened to the projection (a crash before its update, damage, another version's code)."""

from __future__ import annotations

import importlib.util
import itertools
import pkgutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from projection_helpers import rebuilt, same_ledger, spy_reads

import snapledger.adapters.checkpoint
import snapledger.domain
import snapledger.projections
from snapledger.adapters.checkpoint import fast_show, rules
from snapledger.adapters.checkpoint.codec import CheckpointTranscoder
from snapledger.adapters.checkpoint.memory import MemoryProjectionStore
from snapledger.adapters.checkpoint.persisted import PersistedProjection
from snapledger.adapters.checkpoint.rules import (
    BEHIND,
    NEEDS_FULL,
    SAME,
    WRITTEN,
    Doc,
    DocsFor,
    ProjectionStore,
    Row,
    Tracking,
    Update,
    decide,
    row_checksum,
)
from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore import application as event_store
from snapledger.adapters.eventstore import store_url
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import StorageError
from snapledger.domain.image_registry import ImageRegistration
from snapledger.domain.images import Origin
from snapledger.domain.vm import VirtualMachine
from snapledger.projections.documents import json_text, vm_document
from snapledger.projections.view import LedgerView, replacing

A_DISK = "/images/a.qcow2"
B_DISK = "/images/b.qcow2"
EVERY = 4


class World:
    """One host's disks and one in-memory ledger; `process()` is a new process on both."""

    def __init__(self) -> None:
        self.storage = SimulatedStorage()
        self.storage.make_image(A_DISK, 16 * CLUSTER, {0: 1})
        self.app = LedgerApplication("memory:")
        ticks = itertools.count()
        self.clock = lambda: f"2026-01-01T00:00:00.{next(ticks):06d}+00:00"

    def process(self, store: ProjectionStore | None = None) -> Snapledger:
        projection = PersistedProjection(self.app, store=store, every=EVERY)
        return ledger_service(self.app, self.storage, clock=self.clock, projection=projection)

    @property
    def store(self) -> MemoryProjectionStore:
        store = self.process().projection.store
        assert isinstance(store, MemoryProjectionStore)
        return store

    def last(self) -> int:
        return self.app.recorder.max_notification_id() or 0


def history(world: World) -> Snapledger:
    """Two VMs sharing an image (read-only), snapshots, a revert, a delete, and an operation
    left open by a failure mid-way (tuples of steps, reservations)."""
    ledger = world.process()
    ledger.adopt("a", {"vda": A_DISK})
    for name in ("s1", "s2", "s3"):
        ledger.snapshot("a", name)
        world.storage.write(ledger.vm("a").disks["vda"], 1, 0x20)
    frozen = ledger.vm("a").snapshots["s1"].disks["vda"]
    world.storage.make_image(B_DISK, 16 * CLUSTER, {2: 2}, backing=frozen)
    ledger.adopt("b", {"vda": B_DISK})
    ledger.snapshot("b", "t1")
    ledger.revert("a", "s2")
    ledger.delete("a", "s3")
    world.storage.inject(fail_at=1)
    with pytest.raises(StorageError):
        ledger.delete("a", "s2", strategy="commit")
    world.storage.inject()
    assert ledger.vm("a").operation is not None
    return ledger


@pytest.fixture
def world() -> World:
    return World()




def test_a_new_process_starts_from_the_checkpoint_and_gets_what_a_replay_builds(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    history(world)
    last = world.last()
    assert world.store.tracking is not None and world.store.tracking.position == last
    starts = spy_reads(world.app, monkeypatch)
    view = world.process().view
    assert starts and min(starts) == last  # only what follows the checkpoint was read
    assert same_ledger(view, rebuilt(world.app))


def test_the_codec_keeps_every_type(world: World) -> None:
    history(world)
    view = world.process().view
    a = view.vms["a"]
    assert a.operation is not None and isinstance(a.operation.steps, tuple)
    assert all(isinstance(r.origin, Origin) for r in a.images.values())
    reserved = [r for r in view.registrations.values() if r.reserved_by is not None]
    assert reserved and all(isinstance(r.reserved_by, tuple) for r in reserved)
    assert isinstance(a.adopted_dirs, set)
    assert all(isinstance(r.former_users, set) for r in view.registrations.values())


def test_the_transcoder_refuses_classes_outside_the_domain() -> None:
    transcoder = CheckpointTranscoder()
    with pytest.raises(TypeError):
        transcoder.encode({"x": object()})
    smuggled = b'{"_type_":"dataclass","_data_":["os:system",{}]}'
    with pytest.raises(ValueError, match="outside"):
        transcoder.decode(smuggled)
    assert transcoder.decode(transcoder.encode({"_type_": 1, "_data_": (1, "a")})) == {
        "_type_": 1, "_data_": (1, "a"),
    }


class CommitSpy:
    """The store port around a real store: every call goes through, and each commit's rows are
    noted (the aggregates it rewrites)."""

    def __init__(self, real: ProjectionStore) -> None:
        self.real = real
        self.persistent = real.persistent
        self.written: list[set[str]] = []

    def read_current(self, live_only: bool = False) -> tuple[int, Tracking | None, list[Row]]:
        return self.real.read_current(live_only)

    def read_kept(self) -> tuple[list[int], list[Doc]]:
        return self.real.read_kept()

    def read_tracking(self) -> Tracking | None:
        return self.real.read_tracking()

    def read_at(self, position: int, fingerprint: str) -> tuple[int, int, list[Row]] | None:
        return self.real.read_at(position, fingerprint)

    def commit(self, update: Update, docs_for: DocsFor) -> str:
        self.written.append({r.originator_id for r in update.rows})
        return self.real.commit(update, docs_for)

    def wipe(self, seen: Tracking | None) -> None:
        self.real.wipe(seen)

    def close(self) -> None:
        self.real.close()


def test_a_save_behind_another_processes_encodes_nothing(world: World) -> None:
    """Many writers on one ledger: a process whose view is older than what another process saved
    since does not encode its rows only to have them refused (BEHIND)."""
    history(world)
    spy = CommitSpy(world.store)
    slow = world.process(store=spy)
    view = slow.view  # loaded (and saved) at the ledger's position now
    world.process().snapshot("b", "ahead")  # another process saves a later state
    view.dirty |= set(view.aggregates())  # as if it had changed everything since
    spy.written.clear()
    assert slow.projection.save(view) == BEHIND
    assert spy.written == []


def test_a_save_rewrites_only_the_aggregates_that_changed(world: World) -> None:
    ledger = history(world)
    ledger.recover("a")
    before = {a.id: a.version for a in rebuilt(world.app).aggregates().values()}
    spy = CommitSpy(world.store)
    ledger = world.process(store=spy)
    ledger.view  # noqa: B018 (loads)
    spy.written.clear()  # only the snapshot's saves
    ledger.snapshot("b", "t2")
    after = rebuilt(world.app).aggregates()
    changed = {a.id.hex for a in after.values() if before.get(a.id) != a.version}
    assert set().union(*spy.written) == changed  # (an archive point on the way may split the writes)
    assert len(changed) < len(after) / 2


def test_time_travel_starts_from_the_nearest_checkpoint(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = history(world)
    last = world.last()
    assert len(world.store.archives) >= 2
    starts = spy_reads(world.app, monkeypatch)
    for position in range(last + 1):
        starts.clear()
        view = ledger.view_at(position)
        assert same_ledger(view, rebuilt(world.app, position)), position
        assert position - starts[0] < EVERY or position < min(world.store.archives)


def test_a_crash_between_a_save_and_the_projection_update_is_caught_up(world: World) -> None:
    history(world).recover("a")
    before = world.store.tracking
    ledger = ledger_service(world.app, world.storage, clock=world.clock)  # no archive point on the way
    ledger.view  # noqa: B018 (loads)

    def die(*_: object, **__: object) -> str:
        raise SimulatedCrash("killed after the events were saved")

    ledger.projection.save = die  # type: ignore[method-assign]
    with pytest.raises(SimulatedCrash):
        ledger.snapshot("a", "s9")
    assert world.store.tracking == before  # the projection was not updated
    assert before is not None and before.position < world.last()
    view = world.process().view  # the next reader catches up...
    assert same_ledger(view, rebuilt(world.app))
    assert "s9" in view.vms["a"].snapshots
    tracking = world.store.tracking  # ...and saves it
    assert tracking is not None and tracking.position == world.last()


def damage_a_row(store: MemoryProjectionStore) -> None:
    oid, row = next(iter(store.rows.items()))
    store.rows[oid] = row._replace(state=row.state.replace(b'"current":', b'"current" :'))


def drop_a_row(store: MemoryProjectionStore) -> None:
    store.rows.pop(next(iter(store.rows)))


def claim_a_later_position(store: MemoryProjectionStore) -> None:
    assert store.tracking is not None
    store.tracking = store.tracking._replace(position=store.tracking.position + 3)


def claim_an_earlier_position(store: MemoryProjectionStore) -> None:
    """The rows stay as they are, ahead of what the tracking row says."""
    assert store.tracking is not None
    store.tracking = store.tracking._replace(position=store.tracking.position - 5)


def written_by_other_code(store: MemoryProjectionStore) -> None:
    assert store.tracking is not None
    store.tracking = store.tracking._replace(fingerprint="1:00000000")


def forge_a_document(store: MemoryProjectionStore) -> None:
    doc = store.docs["a"]
    store.docs["a"] = doc._replace(text=doc.text.replace('"current"', '"current" '))


@pytest.mark.parametrize(
    "damage",
    [damage_a_row, drop_a_row, claim_a_later_position, claim_an_earlier_position,
     written_by_other_code, forge_a_document],
)
def test_a_damaged_projection_never_changes_what_the_ledger_says(
    world: World, damage: Callable[[MemoryProjectionStore], None]
) -> None:
    history(world)
    expected = {name: json_text(vm_document(rebuilt(world.app), name)) for name in ("a", "b")}
    damage(world.store)
    assert world.store.doc_text("a") in (None, expected["a"])  # the fast path never forges
    view = world.process().view
    assert same_ledger(view, rebuilt(world.app))
    ledger = world.process()
    ledger.checkpoint()
    tracking = world.store.tracking
    assert tracking is not None and tracking.position == world.last()
    assert world.store.doc_text("a") == expected["a"]
    assert same_ledger(world.process().view, rebuilt(world.app))


def test_documents_are_what_show_prints(world: World) -> None:
    history(world)
    whole = rebuilt(world.app)
    for name in whole.vms:
        assert world.store.doc_text(name) == json_text(vm_document(whole, name))
    world.process().snapshot("b", "t2")  # changes b only: a's document stays, b's is rewritten
    whole = rebuilt(world.app)
    for name in whole.vms:
        assert world.store.doc_text(name) == json_text(vm_document(whole, name))
    assert world.store.doc_text("nope") is None


def test_the_position_never_moves_back() -> None:
    fp = "1:abc"
    update = Update(10, fp, 5, False, [], 3, 1, True, 0)
    assert decide(None, update) == NEEDS_FULL
    assert decide(None, update._replace(full=True)) == WRITTEN
    assert decide(Tracking(12, fp, 3, 0, ""), update) == BEHIND
    assert decide(Tracking(12, fp, 3, 0, ""), update._replace(full=True)) == BEHIND
    assert decide(Tracking(10, fp, 3, 0, ""), update) == SAME
    assert decide(Tracking(7, fp, 3, 0, ""), update) == WRITTEN
    assert decide(Tracking(4, fp, 3, 0, ""), update) == NEEDS_FULL  # reset below our base
    assert decide(Tracking(12, "1:other", 3, 0, ""), update) == NEEDS_FULL
    assert decide(Tracking(12, "1:other", 3, 0, ""), update._replace(full=True)) == WRITTEN


def test_the_code_fingerprint_covers_the_library_that_encodes_a_checkpoint() -> None:
    """eventsourcing's aggregate, snapshot and mapper code, and the Python version: a checkpoint
    another version of either wrote is rebuilt, never decoded into these classes."""
    import eventsourcing.domain
    import eventsourcing.persistence

    sources = {path.resolve() for path in rules._sources()}
    for module in (eventsourcing.domain, eventsourcing.persistence):
        assert module.__file__ is not None and Path(module.__file__).resolve() in sources
    assert rules.code_fingerprint().startswith("2:")


def test_the_code_fingerprint_reads_every_module_a_checkpoint_depends_on() -> None:
    """The domain's event bodies, the views and documents, and this room's codec, stores and
    commit flow: a change to any of them rebuilds the projection rather than trusting it. A
    module moved out of these packages, or into a subfolder the fingerprint does not read,
    fails here."""
    sources = set(rules._sources())
    packages = (snapledger.domain, snapledger.projections, snapledger.adapters.checkpoint)
    modules = [
        found.name
        for package in packages
        for found in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
    ]
    room = "snapledger.adapters.checkpoint."
    assert {f"{room}{name}" for name in ("rules", "commit", "codec", "persisted", "memory", "sqlite", "postgres")} <= set(modules)
    assert {"snapledger.domain.vm", "snapledger.projections.view", "snapledger.projections.documents"} <= set(modules)
    for name in modules:
        spec = importlib.util.find_spec(name)  # found, not imported (postgres.py needs psycopg)
        assert spec is not None and spec.origin is not None, name
        assert Path(spec.origin).resolve() in sources, name


def test_two_processes_racing_on_the_projection(world: World) -> None:
    history(world)
    slow = world.process()
    slow.view  # noqa: B018 (loaded at the current position)
    fast = world.process()
    fast.recover("a")  # a later position, saved
    saved = world.store.tracking
    assert saved is not None
    slow.view.dirty.add(next(iter(slow.view.aggregates())))
    assert slow.projection.save(slow.view) == BEHIND  # never back
    assert world.store.tracking == saved
    slow.refresh()  # catches up past the other process's save, then saves over it
    slow.snapshot("b", "t5")
    assert same_ledger(world.process().view, rebuilt(world.app))


def test_memory_store_rows_round_trip() -> None:
    store = MemoryProjectionStore(lambda: 3)
    row = Row("00", 1, 1, "t", b"{}", row_checksum("00", 1, 1, "t", b"{}"))
    update = Update(3, "fp", -1, True, [row], 1, 0, True, 2)
    assert store.commit(update, lambda stored, only_missing: []) == WRITTEN
    assert store.read_current() == (3, Tracking(3, "fp", 1, 3, "", 1), [row])
    assert store.read_at(2, "fp") is None
    assert store.read_at(3, "fp") == (3, 1, [row])
    assert store.read_at(3, "other") is None


# ---- the command line's fast path ----------------------------------------------------------


def test_importing_the_entry_module_stays_light() -> None:
    """`show VM --json` is answered by adapters/cli/entry.py (the console script) before click,
    eventsourcing, rich, lxml or the domain's aggregates are imported."""
    heavy = ["click", "eventsourcing", "rich", "lxml", "snapledger.domain.vm", "snapledger.domain.image_registry",
             "snapledger.adapters.cli.main", "snapledger.adapters.cli.output",
             "snapledger.adapters.service.commands", "snapledger.projections.view"]
    code = (
        "import sys, snapledger.adapters.cli.entry;"
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "url",
    ["sqlite:////abs/l.sqlite", "sqlite:///rel/l.sqlite", "sqlite:///a%20b/l.sqlite",
     "sqlite:///../up.sqlite"],
)
def test_the_fast_path_finds_the_file_the_store_uses(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert store_url.sqlite_file(url) == event_store.persistence_env(url)["SQLITE_DBNAME"]
    assert not list(tmp_path.iterdir())  # parsing a URL creates nothing


@pytest.mark.parametrize("url", ["memory:", "sqlite:///", "sqlite://x", "postgresql:///db", "postgresql://h/",
                                 "sqlite:////", "sqlite:////tmp/a%00b", "postgresql://u@h:99999/db", ""])
def test_the_fast_path_leaves_other_stores_alone(url: str) -> None:
    assert store_url.sqlite_file(url) is None
    assert fast_show.stored_show_text(url, "vm") is None


@pytest.mark.parametrize(
    "url",
    ["postgresql://u@h/db", "postgres://u:p%40ss@h:5433/my%20db", "postgresql://h/db"],
)
def test_the_fast_path_connects_as_the_store_does(url: str) -> None:
    params = fast_show.postgres_connection(url)
    env = event_store.persistence_env(url)
    assert params is not None
    assert {k: params[k] for k in ("host", "port", "dbname", "user")} == {
        "host": env["POSTGRES_HOST"], "port": env["POSTGRES_PORT"],
        "dbname": env["POSTGRES_DBNAME"], "user": env["POSTGRES_USER"],
    }
    assert params.get("password", "") == env["POSTGRES_PASSWORD"]




def test_a_registration_a_commands_copy_looked_up_is_kept_current_in_the_view() -> None:
    """A command plans on `replacing(view, vm)`; a lazy lookup there lands in the dicts the
    copy shares with the view. When the view later applies an event of that registration (it
    looks it up again, newer), the one it answers with must be the newer one, not the copy's."""
    registration = ImageRegistration(path="/images/p", vm="a")
    registration.end_use("a", deleted=True)
    recorded = registration.collect_events()

    def folded() -> ImageRegistration:
        found: Any = None
        for event in recorded:
            found = event.mutate(found)
        return found  # type: ignore[no-any-return]

    view = LedgerView()
    view.lookup = lambda wanted: (folded(), 1) if wanted == registration.id else None
    view.position = len(recorded)
    vm = VirtualMachine(name="a", disks={}, images=[], pools=[], domain_xml=None, at="2026-12-07T00:00:00+00:00")
    copy = replacing(view, vm)
    assert copy.users_of("/images/p") == set()  # looked up through the copy
    later = folded()
    later.add_user("b")  # another process starts using the path
    recorded.extend(later.collect_events())
    view.apply(recorded[-1], len(recorded))
    assert view.users_of("/images/p") == {"b"}
    assert [r.users for r in view.registered["/images/p"]] == [{"b"}]
