"""The persisted, tracked projection: the LedgerView at a recorded ledger position P, so that
no command folds the whole ledger (docs/architecture.md, "Persisted projections").

At P, in one transaction that never moves P back (the store's commit, commit.py's flow):

1. a checkpoint: every aggregate of the view as an eventsourcing snapshot (codec.py); only the
   aggregates changed since the last checkpoint are rewritten (`LedgerView.dirty`);
2. the `show --json` text of every VM whose document changed;
3. P itself.

Every `every` positions the checkpoint is also kept as an archive point, for `view_at`.

A process starts from the newest checkpoint and applies only the events after P. A crash
between a save and the projection's update is harmless: the next reader sees P below the
ledger's last position and catches up. A projection that is damaged, ahead of the ledger, or
written by other code is dropped and rebuilt from the events; it never changes what the ledger
says.

`store_for` picks the store an application's ledger keeps its projection in.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import weakref
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import PersistenceError
from eventsourcing.sqlite import SQLiteConnectionPool, SQLiteFactory

from snapledger.adapters.checkpoint.codec import (
    CheckpointCodec,
    ProjectionDamaged,
    collector_paused,
)
from snapledger.adapters.checkpoint.memory import MemoryProjectionStore
from snapledger.adapters.checkpoint.rules import (
    BEHIND,
    NEEDS_FULL,
    SAME,
    WRITTEN,
    Doc,
    ProjectionStore,
    Tracking,
    Update,
    code_fingerprint,
    doc_checksum,
)
from snapledger.adapters.checkpoint.sqlite import SQLiteProjectionStore
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.eventstore.chain import ChainedPOPOApplicationRecorder
from snapledger.domain.errors import LedgerDamaged, UnknownVm
from snapledger.domain.vm import VirtualMachine, vm_id
from snapledger.projections.dag import ImageDag
from snapledger.projections.documents import disk_chains, vm_document_text
from snapledger.projections.view import LedgerView

CHECKPOINT_EVERY = 5_000  # positions between archive points (time travel replays fewer)
# What a store raises when it can't be read or written (locked too long, read-only, gone):
# sqlite3's own errors, and eventsourcing's, into which its PostgreSQL datastore turns psycopg's.
STORE_ERRORS = (sqlite3.Error, PersistenceError)


def _is_postgres(factory: object) -> bool:
    # A PostgreSQL factory exists only once eventsourcing.postgres was imported: looking it up
    # in sys.modules asks without importing psycopg.
    module = sys.modules.get("eventsourcing.postgres")
    return module is not None and isinstance(factory, module.PostgresFactory)


_memory_stores: weakref.WeakKeyDictionary[object, MemoryProjectionStore] = weakref.WeakKeyDictionary()


def store_for(app: LedgerApplication) -> ProjectionStore:
    """SQLite: the ledger's own file. PostgreSQL: the ledger's database schema
    (adapters/checkpoint/postgres.py, imported only then: no psycopg for anyone else).
    memory, and any other store: an in-memory store kept with the application's recorder (a
    second Snapledger on the same application finds it)."""
    factory = app.factory
    if isinstance(factory, SQLiteFactory):
        name = factory.env.get(SQLiteFactory.SQLITE_DBNAME) or ""
        if name and not SQLiteConnectionPool.detect_memory_mode(name):
            timeout = float(factory.env.get(SQLiteFactory.SQLITE_LOCK_TIMEOUT) or 10)
            return SQLiteProjectionStore(name, timeout)
    elif _is_postgres(factory):
        from snapledger.adapters.checkpoint.postgres import PostgresProjectionStore

        return PostgresProjectionStore.of(app)
    recorder = app.recorder
    store = _memory_stores.get(recorder)
    if store is None:
        ref = weakref.ref(recorder)

        def last_position() -> int:
            found = ref()
            return (found.max_notification_id() or 0) if found is not None else 0

        def chain_hash_at(position: int) -> str:
            found = ref()
            return found.chain_hash_at(position) if isinstance(found, ChainedPOPOApplicationRecorder) else ""

        store = _memory_stores[recorder] = MemoryProjectionStore(last_position, chain_hash_at)
    return store


class PersistedProjection:
    """Loads, catches up and saves one process's LedgerView against the store."""

    def __init__(
        self, app: LedgerApplication, store: ProjectionStore | None = None, every: int = CHECKPOINT_EVERY
    ) -> None:
        self.app = app
        self.store = store if store is not None else store_for(app)
        self.every = every
        self.codec = CheckpointCodec(app.mapper)
        self.fingerprint = code_fingerprint()
        self.base = -1  # the stored position the view's dirty set counts from (-1: none)

    def close(self) -> None:
        self.store.close()

    # ---- the present ---------------------------------------------------------------------

    def load(self, lazy: bool = False) -> LedgerView:
        """The newest checkpoint as a view (not caught up), or an empty view if there is none
        that can be trusted (that one is dropped). `lazy`: only its live rows (the VMs, and the
        registrations some VM uses or an operation holds), so that what a process reads does not
        grow with the images the ledger let go of; the view looks those up in the event store
        when it needs one (LedgerView.lookup)."""
        try:
            top, tracking, rows = self.store.read_current(live_only=lazy)
        except STORE_ERRORS:
            return LedgerView()
        if tracking is None:
            return LedgerView()
        if (
            tracking.fingerprint != self.fingerprint
            or tracking.position > top
            or (tracking.live_rows if lazy else tracking.aggregates) != len(rows)
            or any(type(r.born) is not int or r.born > tracking.position for r in rows)
        ):
            return self._dropped(tracking)
        try:
            view = self.codec.view(rows, tracking.position)
        except ProjectionDamaged:
            return self._dropped(tracking)
        if lazy:
            view.lookup = self.recorded
        self.base = tracking.position
        return view

    def recorded(self, aggregate_id: UUID) -> tuple[Aggregate, int] | None:
        """An aggregate as its events fold it now, with the position of its first event (a
        lazy view's lookup: a registration no VM uses, replayed from its few events), None if
        nothing was recorded of it."""
        try:
            aggregate = self.app.load(aggregate_id)
            born = None if aggregate is None else self.app.recorded_position(aggregate_id)
        except Exception as error:  # a stored fact that can't be read or applied was changed
            if isinstance(error, self.app.errors):  # the store's own trouble, not damage
                raise
            raise LedgerDamaged(
                f"the events of aggregate {aggregate_id} can't be read back "
                f"({type(error).__name__}: {error}); run `snapledger verify`"
            ) from error
        if aggregate is None:
            return None
        if born is None:  # an event store that can't say where (not one of the chained ones)
            raise LedgerDamaged(f"the first event of aggregate {aggregate_id} has no ledger position")
        return aggregate, born

    # A `show` with no checkpoint this close to the ledger's end reads the VM's own events
    # rather than folding the ledger (issue 13: a first `show` on a 1,000,000-event ledger).
    far = 20_000

    def view_of_one(self, name: str) -> LedgerView | None:
        """The view `show NAME` needs, from events alone, if no checkpoint of this code is within
        `far` events of the ledger's end (else None: catching up is cheaper). It holds the VM
        (its newest generation) and every VM that holds one of its images (found through the
        images' registrations), each folded from its own events, and looks up registrations
        when asked; what `show` says of a VM depends on nothing else (the state machine checks
        the document equals the folded ledger's). Never saved: the next command that reads
        the whole ledger folds it and writes the checkpoint."""
        try:
            tracking = self.store.read_tracking()
        except STORE_ERRORS:
            tracking = None
        top = self.app.last_position()
        near = tracking is not None and tracking.fingerprint == self.fingerprint
        if top - (tracking.position if near and tracking is not None else 0) <= self.far:
            return None
        view = LedgerView()
        view.lookup = self.recorded
        vm = self._newest_vm(view, name)
        if vm is None:
            raise UnknownVm(f"no VM named {name!r} in the ledger")
        holders = {
            user for path in vm.images for registration in view.registrations_of(path, vm.home or None)
            for user in registration.users
        }
        for other in sorted(holders - {name}):
            self._newest_vm(view, other)
        view.position = top
        return view

    def _newest_vm(self, view: LedgerView, name: str) -> VirtualMachine | None:
        """The VM of that name with the highest generation recorded (a name adopted again
        after `retire` is a new stream), looked up into `view`."""
        generation = 1
        while self.app.recorded_position(vm_id(name, generation + 1)) is not None:
            generation += 1
        found = view.look_up(vm_id(name, generation))
        return found if isinstance(found, VirtualMachine) else None

    def _dropped(self, tracking: Tracking | None) -> LedgerView:
        try:
            self.store.wipe(tracking)
        except STORE_ERRORS:
            pass
        self.base = -1
        return LedgerView()

    def present(self) -> LedgerView:
        """The ledger's state now: the newest checkpoint (lazily, its live rows), caught up,
        and saved. Should the events after the checkpoint not apply to it (its rows are ahead
        of the position it claims), the checkpoint is dropped and the view folded from position
        0; an error then is the ledger's own."""
        view = self.load(lazy=True)
        try:
            self.catch_up(view)
        except LedgerDamaged:
            if view.position == 0:
                raise  # folded from the first event: the damage is the ledger's own
            try:
                tracking = self.store.read_current()[1]
            except STORE_ERRORS:
                tracking = None
            view = self.catch_up(self._dropped(tracking))
        self.save(view)
        return view

    def catch_up(self, view: LedgerView) -> LedgerView:
        """Apply every event after the view's position. A long way (a first start, or after a
        rebuild) is saved at each multiple of `every` on the way: those are the archive points
        time travel starts from, and an interrupted catch-up resumes from the last one."""
        while True:
            keep = self.every and self.store.persistent
            boundary = (view.position // self.every + 1) * self.every if keep else None
            view.apply_all(self.app.events_after(view.position, stop=boundary))
            if boundary is None or view.position < boundary:
                return view
            self.save(view, docs=False)

    def save(self, view: LedgerView, docs: bool = True) -> str:
        """Persist `view` at its position: the aggregates changed since the last save (all of
        them if the store holds nothing to build on), the documents that changed, and P.
        Cheap when little changed; nothing at all when the store is already there. A store
        that can't be written (locked too long, read-only) is left behind: the next reader
        catches up."""
        if view.position == 0 or not self.store.persistent:
            return SAME
        dirty = set(view.dirty)
        if view.position == self.base and not dirty and not docs:
            return SAME
        try:
            stored = self.store.read_tracking()
        except STORE_ERRORS:
            stored = None
        if stored is not None and stored.fingerprint == self.fingerprint and stored.position > view.position:
            # another process saved a later state meanwhile (many writers on one ledger): the
            # write would be refused (BEHIND), so the rows are not encoded for nothing
            return BEHIND
        try:
            outcome = self._commit(view, dirty, docs, full=self.base < 0)
            if outcome == NEEDS_FULL and view.lookup is None:  # a lazy view can't write it all
                outcome = self._commit(view, dirty, docs, full=True)
        except STORE_ERRORS:
            return "failed"
        if outcome in (WRITTEN, SAME):
            view.dirty -= dirty
            self.base = view.position
        return outcome

    def _commit(self, view: LedgerView, dirty: set[UUID], docs: bool, full: bool) -> str:
        aggregates = view.aggregates()
        # the dirty ones alone, in the order of their first events: a save costs what changed
        ids = aggregates if full else sorted((i for i in dirty if i in aggregates), key=view.born.__getitem__)
        rows = [self.codec.row(aggregates[i], view.born[i]) for i in ids]
        update = Update(
            position=view.position,
            fingerprint=self.fingerprint,
            base=self.base,
            full=full,
            rows=rows,
            aggregates=len(aggregates),
            vms=len(view.vms),
            docs=docs,
            every=self.every,
        )
        changed = {
            a.name for i in dirty if isinstance(a := aggregates.get(i), VirtualMachine)
        } | (set(view.vms) if full else set())

        def docs_for(stored: dict[str, str], only_missing: bool) -> list[Doc]:
            missing = [name for name in view.vms if name not in stored]
            if not missing and (only_missing or not changed):
                return []  # a document depends on VMs only: none changed, none to rewrite
            dags: dict[str, ImageDag] = {}  # one per home host: each VM's chains as its host sees them
            out = []
            for name, vm in view.vms.items():
                dag = dags.get(vm.home) or dags.setdefault(vm.home, ImageDag(view, home=vm.home))
                chains = json.dumps(disk_chains(vm, dag), separators=(",", ":"))
                if name in stored and (only_missing or (name not in changed and stored[name] == chains)):
                    continue
                text = vm_document_text(view, name, dag)
                out.append(Doc(name, chains, text, doc_checksum(name, chains, text)))
            return out

        return self.store.commit(update, docs_for)

    # ---- the past --------------------------------------------------------------------------

    def view_at(self, position: int) -> LedgerView:
        """The ledger's state right after `position`: the nearest checkpoint at or before it
        (an archive point or the current one), then the events up to `position`."""
        view = self._checkpoint_at(position) or LedgerView()
        if position - view.position <= 2 * self.every:  # bounded: no cycles pile up
            with collector_paused():
                view.apply_all(self.app.events_after(view.position, stop=position))
        else:
            view.apply_all(self.app.events_after(view.position, stop=position))
        view.dirty.clear()
        return view

    def _checkpoint_at(self, position: int) -> LedgerView | None:
        try:
            found = self.store.read_at(position, self.fingerprint)
        except STORE_ERRORS:
            return None
        if found is None:
            return None
        point, count, rows = found
        if len(rows) != count:
            return None
        try:
            return self.codec.view(rows, point)
        except ProjectionDamaged:
            return None


__all__ = ["CHECKPOINT_EVERY", "PersistedProjection", "store_for"]
