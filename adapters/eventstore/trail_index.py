"""The trail, indexed in the SQLite ledger file so `log` doesn't decode the whole ledger.

One row per event (position, time, vm, image, type, summary), derived from the events by
projections/trail.py and kept up to date by polling: each `log` first adds the rows for events
recorded since the last indexed position. Who/where/why come from the chain records at query
time. The index is a cache: `verify` recomputes it from the events it has just checked and reports
any row that disagrees (then rebuilds it), so it never says anything the events don't.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.eventstore.chain import CHAIN_TABLE, add_operation_column
from snapledger.domain.ledger_hash import RecordedBy
from snapledger.projections.trail import TrailEntry, trail

# v2: with each event's operation facts (an index of the first version is left, unused)
TRAIL = "snapledger_trail_v2"
NAMES = "snapledger_trail_names"
SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TRAIL} (position INTEGER PRIMARY KEY, time TEXT NOT NULL, "
    "vm TEXT, image TEXT, type TEXT NOT NULL, summary TEXT NOT NULL, facts TEXT)",
    f"CREATE INDEX IF NOT EXISTS {TRAIL}_vm ON {TRAIL} (vm, position)",
    f"CREATE TABLE IF NOT EXISTS {NAMES} (originator_id TEXT PRIMARY KEY, vm TEXT, image TEXT)",
)
BATCH = 5_000


def trail_index_for(app: LedgerApplication) -> TrailIndex | None:
    """The SQLite ledger's trail index (other stores compute the trail in memory)."""
    from snapledger.adapters.eventstore.store_url import sqlite_file

    path = sqlite_file(app.store_url)
    if path is None:
        return None
    index: TrailIndex | None = None
    try:
        index = TrailIndex(app, path)
        index.catch_up()
    except sqlite3.OperationalError:  # a ledger we may only read (or locked too long): no cache
        if index is not None:
            index.close()
        return None
    return index


class TrailIndex:
    def __init__(self, app: LedgerApplication, path: str) -> None:
        self.app = app
        self.con = sqlite3.connect(path, timeout=10, isolation_level=None)
        for statement in SCHEMA:
            self.con.execute(statement)
        add_operation_column(self.con.cursor())  # a ledger no writer of this version opened yet

    def close(self) -> None:
        self.con.close()

    def catch_up(self) -> None:
        """Index the events recorded since the last indexed position."""
        (last,) = self.con.execute(f"SELECT COALESCE(MAX(position), 0) FROM {TRAIL}").fetchone()
        if last >= self.app.last_position():
            return
        names = {
            UUID(oid): (vm, image)
            for oid, vm, image in self.con.execute(f"SELECT originator_id, vm, image FROM {NAMES}")
        }
        known = set(names)
        events = self.app.events_after(last)
        while True:
            chunk = [pair for _, pair in zip(range(BATCH), events, strict=False)]
            batch = trail(chunk, None, names)
            if batch:
                self._insert(batch, {k: v for k, v in names.items() if k not in known})
                known = set(names)
            if len(chunk) < BATCH:
                return

    def _insert(self, entries: list[TrailEntry], new_names: dict[UUID, tuple[str | None, str | None]]) -> None:
        self.con.execute("BEGIN IMMEDIATE")
        try:
            # OR IGNORE: another process may have indexed the same positions meanwhile.
            self.con.executemany(
                f"INSERT OR IGNORE INTO {TRAIL} VALUES (?, ?, ?, ?, ?, ?, ?)",
                [_columns(e) for e in entries],
            )
            self.con.executemany(
                f"INSERT OR IGNORE INTO {NAMES} VALUES (?, ?, ?)",
                [(oid.hex, vm, image) for oid, (vm, image) in new_names.items()],
            )
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def select(
        self,
        vm: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        types: Collection[str] = (),
    ) -> list[TrailEntry]:
        self.catch_up()
        where, params = [], []
        if vm is not None:
            where.append("t.vm = ?")
            params.append(vm)
        if since is not None:
            where.append("t.time >= ?")
            params.append(since.astimezone(UTC).isoformat(timespec="microseconds"))
        if until is not None:
            where.append("t.time <= ?")
            params.append(until.astimezone(UTC).isoformat(timespec="microseconds"))
        if types:
            where.append("(" + " OR ".join(["t.type = ? OR t.type LIKE ?"] * len(types)) + ")")
            for name in types:
                params += [name, f"%.{name}"]
        query = (
            f"SELECT t.position, t.time, t.vm, t.image, t.type, t.summary, t.facts, "
            f"c.actor, c.host, c.tool_version, c.reason, c.operation, c.hash "
            f"FROM {TRAIL} t LEFT JOIN {CHAIN_TABLE} c ON c.position = t.position"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY t.position"
        )
        return [_entry(row) for row in self.con.execute(query, params)]

    def position_at(self, when: datetime) -> int:
        """The last position whose event time is at or before `when` (0 if none): the same
        answer as Snapledger.position_at, from the index instead of every event."""
        self.catch_up()
        (found,) = self.con.execute(
            f"SELECT COALESCE(MAX(position), 0) FROM {TRAIL} WHERE time <= ?",
            (when.astimezone(UTC).isoformat(timespec="microseconds"),),
        ).fetchone()
        return int(found)

    def disagreements(self, truth: Iterable[TrailEntry]) -> list[int]:
        """Positions where the index differs from `truth` (the trail recomputed from the events);
        the index is then rebuilt from scratch."""
        stored = {
            row[0]: tuple(row)
            for row in self.con.execute(f"SELECT position, time, vm, image, type, summary, facts FROM {TRAIL}")
        }
        wrong = [e.position for e in truth if e.position in stored and stored[e.position] != _columns(e)]
        if wrong:
            self.con.execute(f"DELETE FROM {TRAIL}")
            self.con.execute(f"DELETE FROM {NAMES}")
        return wrong


def _columns(e: TrailEntry) -> tuple[Any, ...]:
    facts = None if e.facts is None else json.dumps(e.facts, sort_keys=True, separators=(",", ":"))
    return (e.position, e.time, e.vm, e.image, e.type, e.summary, facts)


def _entry(row: tuple[Any, ...]) -> TrailEntry:
    # The columns come back as the types they were written with (sqlite3 keeps TEXT as str).
    position, time, vm, image, kind, summary, facts, actor, host, version, reason, operation, record_hash = row
    by = RecordedBy(actor, host, version, reason, operation) if actor is not None else None
    return TrailEntry(
        position, time, vm, image, kind, summary, by, record_hash, None if facts is None else json.loads(facts)
    )
