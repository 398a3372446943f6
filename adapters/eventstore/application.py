"""The event store: an eventsourcing Application whose persistence is chosen by a store URL.

It is the service's LedgerStore (adapters/service/ports.py): `load`, `record` and the rest
speak the service's terms, so that eventsourcing's own exceptions stay in this room.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Mapper, Notification, PersistenceError, RecordConflictError
from eventsourcing.sqlite import SQLiteDatastore

from snapledger.adapters.eventstore.chain import UNKNOWN
from snapledger.adapters.eventstore.failures import describe
from snapledger.adapters.eventstore.mapper import RecordedHostMapper, weakly_bound
from snapledger.adapters.eventstore.store_url import MEMORY, SQLITE, parse_store_url
from snapledger.domain.errors import (
    BadInput,
    ConcurrentUpdate,
    LedgerDamaged,
    SnapledgerError,
    StoreUnusable,
)
from snapledger.domain.ledger_hash import (
    ChainFinding,
    ChainRecord,
    RecordedBy,
    StoredEventRow,
    check_chain,
    head,
    stored_event_row,
)
from snapledger.domain.vm import vm_id
from snapledger.projections.history import event_time

CONNECT_TIMEOUT_SECONDS = 10
NOTIFICATION_BATCH = 20_000  # big batches keep per-query cost out of a rebuild
CHAINED = "snapledger.adapters.eventstore.chain"  # recorders that keep the hash chain
QUICK_CHECK_LINES = 3  # what verify quotes of SQLite's findings on a damaged file
# The store's own failures: sqlite3's, and eventsourcing's, into which it wraps psycopg's.
STORE_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, PersistenceError)


def persistence_env(url: str) -> dict[str, str]:
    """Map a store URL (adapters/eventstore/store_url.py) to eventsourcing's environment settings. Looks at
    no file and creates none: adapters/eventstore/probe.py decides what may be opened."""
    store = parse_store_url(url)
    if store.kind == MEMORY:
        return {"PERSISTENCE_MODULE": f"{CHAINED}:ChainedPOPOFactory"}
    if store.kind == SQLITE:
        return {
            "PERSISTENCE_MODULE": f"{CHAINED}:ChainedSQLiteFactory",
            "SQLITE_DBNAME": store.path,
            "SQLITE_LOCK_TIMEOUT": "10",
        }
    pg = store.postgres
    assert pg is not None
    return {
        "PERSISTENCE_MODULE": "snapledger.adapters.eventstore.chain_postgres:ChainedPostgresFactory",
        "POSTGRES_DBNAME": pg.dbname,
        "POSTGRES_HOST": pg.host,
        "POSTGRES_PORT": str(pg.port),
        "POSTGRES_USER": pg.user,
        # No password in the URL: an empty one, so libpq falls back to ~/.pgpass or trust.
        "POSTGRES_PASSWORD": pg.password,
        # A database that can't be reached fails the command (exit 1, nothing done) in seconds,
        # not after the library's 30 s of retries.
        "POSTGRES_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT_SECONDS),
    }


def project_events(aggregate: Any, events: Iterable[DomainEventProtocol[UUID]]) -> Any:
    """eventsourcing's `project_aggregate` (the repository's projector) without its per-event
    `isinstance` against a typing Protocol, which costs nearly half of loading a VM with a long
    history. Our events are the library's own `@event` classes: they can mutate."""
    for event in events:
        aggregate = event.mutate(aggregate)  # type: ignore[attr-defined]
    return aggregate


class LedgerApplication(Application[UUID]):
    """Thin: the repository loads aggregates, `save` stores their new events atomically."""

    name = "snapledger"

    def __init__(
        self,
        store_url: str = "memory:",
        env: dict[str, Any] | None = None,
        recorded_by: RecordedBy = UNKNOWN,
    ) -> None:
        self.store_url = store_url
        self.recorded_by = recorded_by  # who/where/why, chained with every event saved
        self.read_only = False  # a replayed history
        self.operation_positions: dict[str, int] = {}  # operation id -> its last saved position
        super().__init__(env={**persistence_env(store_url), **(env or {})})

    def construct_mapper(self) -> Mapper[UUID]:
        mapper = super().construct_mapper()
        reading = RecordedHostMapper(mapper.transcoder, mapper.compressor, mapper.cipher)
        # weakly: the application owns its mapper, and a strong reference back would keep a
        # dropped application (and its connections) alive until the cycle collector runs
        reading.recorded_host = weakly_bound(self._recorded_host)
        return reading

    def _recorded_host(self, originator_id: UUID, version: int) -> str | None:
        recorded_host = getattr(self.recorder, "recorded_host", None)  # the chained recorders'
        return recorded_host(originator_id, version) if recorded_host is not None else None

    def recorded_position(self, originator_id: UUID, version: int = 1) -> int | None:
        """The ledger position of an aggregate's event (its first: where it was born)."""
        recorded_position = getattr(self.recorder, "recorded_position", None)
        return recorded_position(originator_id, version) if recorded_position is not None else None

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        if self.read_only:
            raise BadInput("this ledger is a replay and read-only: nothing can be recorded")
        kwargs.setdefault("recorded_by", self.recorded_by)
        recordings = super().save(*objs, **kwargs)
        operation = kwargs["recorded_by"].operation
        if recordings and operation is not None:
            self.operation_positions[operation] = max(r.notification.id for r in recordings)
        return recordings

    # ---- operations: every event a command records carries its operation's id ---------

    def begin_operation(self) -> str:
        """A new operation: the events saved from now on carry its id (in their chain records).
        Returns the id; `operation` is the one being recorded."""
        operation = uuid.uuid4().hex
        self.recorded_by = dataclasses.replace(self.recorded_by, operation=operation)
        return operation

    @property
    def operation(self) -> str | None:
        return self.recorded_by.operation

    def continue_operation(self, operation: str | None) -> None:
        """Record under `operation` again (an enclosing operation, once a nested one is done)."""
        self.recorded_by = dataclasses.replace(self.recorded_by, operation=operation)

    def operation_position(self, operation: str) -> int | None:
        """The position of the last event this process saved for `operation` (None: none)."""
        return self.operation_positions.get(operation)

    # ---- the service's LedgerStore port -----------------------------------------------

    errors = STORE_ERRORS

    def load(self, aggregate_id: UUID) -> Any | None:
        """The aggregate with every event applied, or None if nothing was recorded of it."""
        try:
            return self.repository.get(aggregate_id, projector_func=project_events)
        except AggregateNotFoundError:
            return None

    def record(self, *aggregates: Any) -> None:
        """`save`, with a writers' race said as ConcurrentUpdate (nothing is saved then)."""
        try:
            self.save(*aggregates)
        except RecordConflictError:
            raise ConcurrentUpdate("another process recorded on this part of the ledger first") from None

    def describe(self, error: BaseException) -> str:
        try:
            label: str | None = parse_store_url(self.store_url).label
        except SnapledgerError:
            label = None
        return describe(error, label)

    def newest_first(self, aggregate_id: UUID) -> Iterator[Any]:
        yield from self.repository.event_store.get(aggregate_id, desc=True)

    def position_at(self, when: datetime) -> int:
        """The position of the last event whose time is at or before `when` (0 if none): from
        the SQLite ledger's trail index, else by walking the whole log (event times need not
        grow with positions: hosts' clocks differ)."""
        from snapledger.adapters.eventstore.trail_index import (
            trail_index_for,  # it builds on this class
        )

        index = trail_index_for(self)
        if index is not None:
            return index.position_at(when)
        found = 0
        for event, position in self.events_after(0):
            if event_time(event) <= when:
                found = position
        return found

    def events_after(
        self, position: int, stop: int | None = None
    ) -> Iterator[tuple[DomainEventProtocol[UUID], int]]:
        """Every event recorded after `position` (and, given `stop`, at or before `stop`), in
        ledger order, with its position."""
        for notification in self._notifications(position, stop):
            yield self._decoded(notification), notification.id

    def _notifications(self, after: int, stop: int | None) -> Iterator[Notification]:
        while True:
            batch = self.recorder.select_notifications(
                start=after, limit=NOTIFICATION_BATCH, stop=stop, inclusive_of_start=False
            )
            yield from batch
            if len(batch) < NOTIFICATION_BATCH:
                return
            after = batch[-1].id

    def last_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    def has_vm(self, name: str) -> bool:
        return bool(self.recorder.select_events(vm_id(name), limit=1))

    def check_file(self) -> None:
        """SQLite's own check of the ledger file (`PRAGMA quick_check`, which reads every page):
        damage no command happened to read yet. StoreUnusable (exit 1) if it finds any."""
        datastore = getattr(self.recorder, "datastore", None)
        if not isinstance(datastore, SQLiteDatastore) or datastore.pool.is_sqlite_memory_mode:
            return
        with datastore.transaction(commit=False) as cursor:
            cursor.execute(f"PRAGMA quick_check({QUICK_CHECK_LINES})")
            found = [str(row[0]) for row in cursor.fetchall()]
        if found != ["ok"]:
            raise StoreUnusable(
                f"store {datastore.pool.db_name} is damaged (SQLite's check: {'; '.join(found)})"
            )

    def _decoded(self, notification: Notification) -> DomainEventProtocol[UUID]:
        try:
            return self.mapper.to_domain_event(notification)
        except Exception as error:  # any decoding failure means bytes changed under us
            raise LedgerDamaged(
                f"the stored event at ledger position {notification.id} can't be read "
                f"({type(error).__name__}); run `snapledger verify`"
            ) from None

    # ---- the hash chain ----------------------------------------------------------------

    def chain(self, after: int = 0, stop: int | None = None) -> list[ChainRecord]:
        """The chain records after position `after` (up to `stop`), in ledger order."""
        return self.recorder.select_chain(after, stop)  # type: ignore[attr-defined, no-any-return]

    def stored_rows(self, after: int = 0, stop: int | None = None) -> Iterator[StoredEventRow]:
        """The stored events as bytes, with positions: what the chain commits to."""
        for n in self._notifications(after, stop):
            yield stored_event_row(n.id, n.originator_id, n.originator_version, n.topic, n.state)

    def check_chain(self, expect_head: str | None = None) -> list[ChainFinding]:
        return check_chain(list(self.stored_rows()), self.chain(), expect_head)

    def head(self) -> tuple[int, str]:
        """The last position and its chain hash: keep it elsewhere, give it to verify later."""
        last = self.last_position()
        records = self.chain(after=max(last - 1, 0)) if last else []
        return head(records)
