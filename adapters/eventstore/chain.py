"""Recorders that write the hash chain beside the stored events, in the same transaction.

eventsourcing's application recorders are extended, not replaced: after the library inserts the
events (and knows their positions), the chain records for them are inserted in the same
transaction, continuing from the last record. Writers are serialised by the store (SQLite's write
lock; on PostgreSQL the events table's lock, which chain_postgres.py's save function takes before
inserting), so "the record before" is well defined. `Application.save(..., recorded_by=
RecordedBy(...))` passes who/where/why down.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.popo import POPOApplicationRecorder, POPOFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteFactory

from snapledger.domain.ledger_hash import (
    GENESIS,
    UNKNOWN_HOST,
    ChainRecord,
    RecordedBy,
    chain_records,
    hashed_context,
    row_digest,
    stored_event_row,
)

CHAIN_TABLE = "snapledger_chain"
UNKNOWN = RecordedBy(actor="unknown", host=UNKNOWN_HOST, tool_version="unknown")


# chain_hash's text, JSON of [prev_hash, position, digest, actor, host, tool_version, reason(,
# operation)],
# cut around what only the writer holding the lock knows (the previous hash and the position):
# HASH_HEAD + prev_hash + HASH_MID + str(position) + HASH_SEP + digest + chain_hash_tail(by).
HASH_HEAD, HASH_MID, HASH_SEP = '["', '",', ',"'


def chain_hash_tail(by: RecordedBy) -> str:
    """The end of chain_hash's text after the digest: ASCII (non-ASCII is escaped)."""
    return '",' + json.dumps(hashed_context(by), separators=(",", ":"))[1:]


def chain_hash_text(prev_hash: str, position: int, digest: str, tail: str) -> str:
    """The text chain_hash hashes, put together from its parts (as the PostgreSQL save does)."""
    return HASH_HEAD + prev_hash + HASH_MID + str(position) + HASH_SEP + digest + tail


def event_digests(stored_events: Sequence[StoredEvent]) -> list[str]:
    """Each event's digest: it does not depend on the position, so it can be computed before
    the lock that orders the saves is taken."""
    return [
        row_digest(stored_event_row(0, s.originator_id, s.originator_version, s.topic, s.state))
        for s in stored_events
    ]


def new_records(
    prev_hash: str, stored_events: Sequence[StoredEvent], positions: Sequence[int], kwargs: dict[str, Any]
) -> list[ChainRecord]:
    """The chain records for one save's events, continuing from `prev_hash`."""
    rows = [
        stored_event_row(p, s.originator_id, s.originator_version, s.topic, s.state)
        for s, p in zip(stored_events, positions, strict=True)
    ]
    return chain_records(prev_hash, rows, kwargs.get("recorded_by") or UNKNOWN)


class ChainedSQLiteApplicationRecorder(SQLiteApplicationRecorder):
    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            f"CREATE TABLE IF NOT EXISTS {CHAIN_TABLE} ("
            "position INTEGER PRIMARY KEY, event_digest TEXT NOT NULL, prev_hash TEXT NOT NULL, "
            "hash TEXT NOT NULL, actor TEXT NOT NULL, host TEXT NOT NULL, "
            "tool_version TEXT NOT NULL, reason TEXT, operation TEXT)",
        ]

    def _create_table(self, c: SQLiteCursor) -> None:
        super()._create_table(c)
        add_operation_column(c)

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        positions = super()._insert_events(c, stored_events, **kwargs)
        if not positions:
            return positions
        # The inserts above hold SQLite's write lock, so no other writer sits between.
        c.execute(
            f"SELECT hash FROM {CHAIN_TABLE} WHERE position < ? ORDER BY position DESC LIMIT 1",
            (positions[0],),
        )
        found = c.fetchone()
        prev_hash = found[0] if found else GENESIS
        records = new_records(prev_hash, stored_events, positions, kwargs)
        c.executemany(
            f"INSERT INTO {CHAIN_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [r.as_row() for r in records]
        )
        return positions

    def select_chain(self, after: int = 0, stop: int | None = None) -> list[ChainRecord]:
        query = f"SELECT * FROM {CHAIN_TABLE} WHERE position > ?"
        params: list[int] = [after]
        if stop is not None:
            query += " AND position <= ?"
            params.append(stop)
        with self.datastore.transaction(commit=False) as c:
            c.execute(query + " ORDER BY position", params)
            return [ChainRecord(*row) for row in c.fetchall()]

    def recorded_host(self, originator_id: UUID, version: int) -> str | None:
        """The host the chain record of that event names (None: no such event or record)."""
        found = self._of_event(
            f"SELECT c.host FROM {self.events_table_name} e JOIN {CHAIN_TABLE} c ON c.position = e.rowid "
            "WHERE e.originator_id = ? AND e.originator_version = ?", originator_id, version,
        )
        return None if found is None else str(found)

    def recorded_position(self, originator_id: UUID, version: int) -> int | None:
        """The ledger position of that event (None: no such event)."""
        found = self._of_event(
            f"SELECT rowid FROM {self.events_table_name} WHERE originator_id = ? AND originator_version = ?",
            originator_id, version,
        )
        return None if found is None else int(found)

    def _of_event(self, query: str, originator_id: UUID, version: int) -> Any:
        with self.datastore.transaction(commit=False) as c:
            c.execute(query, (originator_id.hex, version))
            found = c.fetchone()
        return None if found is None else found[0]


def add_operation_column(c: Any) -> None:
    """A ledger made before operations were recorded gets the chain's `operation` column (its
    older records read as None, and hash as they always did)."""
    c.execute(f"PRAGMA table_info({CHAIN_TABLE})")
    if "operation" not in {row[1] for row in c.fetchall()}:
        try:
            c.execute(f"ALTER TABLE {CHAIN_TABLE} ADD COLUMN operation TEXT")
        except sqlite3.OperationalError as error:  # another process added it since we looked
            if "duplicate column" not in str(error):
                raise


class ChainedPOPOApplicationRecorder(POPOApplicationRecorder):
    def __init__(self) -> None:
        super().__init__()
        self._chain: list[ChainRecord] = []

    def _insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        with self._database_lock:
            positions = super()._insert_events(stored_events, **kwargs)
            if positions:
                prev_hash = self._chain[-1].hash if self._chain else GENESIS
                self._chain += new_records(prev_hash, stored_events, positions, kwargs)
            return positions

    def select_chain(self, after: int = 0, stop: int | None = None) -> list[ChainRecord]:
        with self._database_lock:
            return [
                r for r in self._chain if r.position > after and (stop is None or r.position <= stop)
            ]

    def chain_hash_at(self, position: int) -> str:
        """The chain's hash at `position` ("" if none): positions here run 1, 2, 3, ..."""
        with self._database_lock:
            if 0 < position <= len(self._chain) and self._chain[position - 1].position == position:
                return self._chain[position - 1].hash
            return next((r.hash for r in self._chain if r.position == position), "")

    def recorded_host(self, originator_id: UUID, version: int) -> str | None:
        with self._database_lock:
            index = self._stored_events_index[str(originator_id)].get(version)
            position = None if index is None else index + 1
            found = [r.host for r in self._chain if r.position == position]
        return found[0] if found else None

    def recorded_position(self, originator_id: UUID, version: int) -> int | None:
        with self._database_lock:
            index = self._stored_events_index[str(originator_id)].get(version)
        return None if index is None else index + 1


class ChainedSQLiteFactory(SQLiteFactory):
    application_recorder_class = ChainedSQLiteApplicationRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        pool = self.datastore.pool
        if not pool.is_sqlite_memory_mode:
            in_wal_mode(pool.db_name, float(pool.lock_timeout or 5))


def in_wal_mode(db_name: str, timeout: float) -> None:
    """Put the ledger file in WAL mode before eventsourcing's pool opens it. The library switches
    a file to WAL on its first connection, and SQLite refuses that switch at once ("database is
    locked", no busy wait) while another process is switching it or writing: several processes
    starting on a new ledger together failed one time in a few runs. Here the switch is retried
    until `timeout`; once the file is in WAL mode the library has nothing to switch."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            con = sqlite3.connect(db_name, uri=True, timeout=timeout, isolation_level=None)
            try:
                if str(con.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    con.execute("PRAGMA journal_mode=WAL")
                return
            finally:
                con.close()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class ChainedPOPOFactory(POPOFactory):
    def application_recorder(self) -> ChainedPOPOApplicationRecorder:
        return ChainedPOPOApplicationRecorder()
