"""The projection store in the ledger's SQLite file: the tables of rules.py beside
eventsourcing's `stored_events`, through a connection of its own, with sqlite3 alone.

Its own connection so that a write transaction can be `BEGIN IMMEDIATE`: it waits (up to the
store's lock timeout) for SQLite's one write lock instead of failing when another process wrote
since it began reading. That lock orders the commits of every process; a threading lock orders
this process's threads on the one connection. Commits follow commit.py; this module supplies
the SQL. `read_tracking` is also what `show`'s fast path reads (fast_show.py).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from snapledger.adapters.checkpoint.commit import TablesUnreadable, commit_update
from snapledger.adapters.checkpoint.rules import (
    ARCHIVES,
    CHAIN,
    CHECKPOINT,
    COLUMNS,
    DOCS,
    EVENTS,
    HISTORY,
    PROJECTION_TABLES,
    RESET_TABLES,
    ROW_COLUMNS,
    TRACKING,
    VIEW,
    Doc,
    DocsFor,
    Row,
    Tracking,
    Update,
    doc_intact,
    tracking_checksum,
    tracking_from_row,
)

SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TRACKING} (name TEXT PRIMARY KEY, position INTEGER NOT NULL, "
    "fingerprint TEXT NOT NULL, aggregates INTEGER NOT NULL, archived INTEGER NOT NULL, "
    "anchor TEXT NOT NULL, live_rows INTEGER NOT NULL, checksum INTEGER NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {CHECKPOINT} (originator_id TEXT PRIMARY KEY, "
    "originator_version INTEGER NOT NULL, born INTEGER NOT NULL, topic TEXT NOT NULL, "
    "state BLOB NOT NULL, checksum INTEGER NOT NULL, live INTEGER NOT NULL, "
    "unarchived INTEGER NOT NULL DEFAULT 1)",
    f"CREATE INDEX IF NOT EXISTS {CHECKPOINT}_unarchived ON {CHECKPOINT} (unarchived) "
    "WHERE unarchived = 1",
    f"CREATE INDEX IF NOT EXISTS {CHECKPOINT}_live ON {CHECKPOINT} (born, originator_id) WHERE live = 1",
    f"CREATE TABLE IF NOT EXISTS {DOCS} (vm TEXT PRIMARY KEY, chains TEXT NOT NULL, "
    "doc TEXT NOT NULL, checksum INTEGER NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {HISTORY} (position INTEGER NOT NULL, originator_id TEXT NOT NULL, "
    "originator_version INTEGER NOT NULL, born INTEGER NOT NULL, topic TEXT NOT NULL, "
    "state BLOB NOT NULL, checksum INTEGER NOT NULL, live INTEGER NOT NULL, "
    "PRIMARY KEY (originator_id, originator_version))",
    f"CREATE INDEX IF NOT EXISTS {HISTORY}_position ON {HISTORY} (position)",
    f"CREATE TABLE IF NOT EXISTS {ARCHIVES} (position INTEGER PRIMARY KEY, aggregates INTEGER NOT NULL)",
)
ROW_LIST = ", ".join(ROW_COLUMNS)


def read_tracking(con: sqlite3.Connection) -> Tracking | None:
    """The tracking row, checked against the chain's hash at its position (rules.
    tracking_from_row: DAMAGED if edited by hand, UNANCHORED if the chain says otherwise now);
    raises sqlite3.OperationalError if a table is not there."""
    found = con.execute(
        f"SELECT t.position, t.fingerprint, t.aggregates, t.archived, t.anchor, t.live_rows, t.checksum, "
        f"(SELECT c.hash FROM {CHAIN} AS c WHERE c.position = t.position) "
        f"FROM {TRACKING} AS t WHERE t.name = ?",
        (VIEW,),
    ).fetchone()
    return tracking_from_row(found)


def chain_hash_at(con: sqlite3.Connection, position: int) -> str:
    found = con.execute(f"SELECT hash FROM {CHAIN} WHERE position = ?", (position,)).fetchone()
    return str(found[0]) if found is not None else ""


def _ensure_schema(con: sqlite3.Connection) -> None:
    """Inside a write transaction: the tables exist, with the columns this code uses."""
    # The shape first: an index of this code's can't be made on an older code's table. A table
    # of another shape means another code's projection: start afresh; a missing one is made.
    present = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    try:
        for table, columns in COLUMNS.items():
            if table in present:
                con.execute(f"SELECT {', '.join(columns)} FROM {table} LIMIT 0")
    except sqlite3.OperationalError:
        for table in PROJECTION_TABLES:
            con.execute(f"DROP TABLE IF EXISTS {table}")
    for statement in SCHEMA:
        con.execute(statement)


def _top(con: sqlite3.Connection) -> int:
    """The ledger's last position (0: no events)."""
    return int(con.execute(f"SELECT MAX(rowid) FROM {EVENTS}").fetchone()[0] or 0)


def _rows(con: sqlite3.Connection, live_only: bool = False) -> list[Row]:
    where = "WHERE live = 1 " if live_only else ""
    return [_row(r) for r in con.execute(f"SELECT {ROW_LIST} FROM {CHECKPOINT} {where}ORDER BY born, originator_id")]


def _row(found: tuple[Any, ...]) -> Row:
    """A row as SQLite gives it back (`live` is stored as an integer: 0 and 1 read as False and
    True, anything else is kept as it is, for the codec to refuse)."""
    oid, version, born, topic, state, checksum, live = found
    return Row(oid, version, born, topic, state, checksum, bool(live) if live in (0, 1) else live)


class SQLiteTables:
    """The projection's tables inside one of the store's transactions (commit.py's primitives)."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def stored_tracking(self) -> Tracking | None:
        return read_tracking(self.con)

    def stored_chains(self) -> dict[str, str]:
        docs = (Doc(*row) for row in self.con.execute(f"SELECT vm, chains, doc, checksum FROM {DOCS}"))
        return {doc.vm: doc.chains for doc in docs if doc_intact(doc)}

    def clear(self) -> None:
        for table in RESET_TABLES:
            self.con.execute(f"DELETE FROM {table}")

    def put_rows(self, rows: list[Row]) -> None:
        # `unarchived` is left to its default, 1: a rewritten row is kept by the next archive point.
        self.con.executemany(
            f"INSERT OR REPLACE INTO {CHECKPOINT} ({ROW_LIST}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
        )

    def put_docs(self, docs: list[Doc]) -> None:
        self.con.executemany(f"INSERT OR REPLACE INTO {DOCS} VALUES (?, ?, ?, ?)", docs)

    def drop_docs(self) -> None:
        self.con.execute(f"DELETE FROM {DOCS}")

    def count_rows(self) -> tuple[int, int]:
        count = int(self.con.execute(f"SELECT COUNT(*) FROM {CHECKPOINT}").fetchone()[0])
        live = int(self.con.execute(f"SELECT COUNT(*) FROM {CHECKPOINT} WHERE live = 1").fetchone()[0])
        return count, live

    def keep_archive_point(self, position: int, count: int) -> None:
        self.con.execute(
            f"INSERT OR IGNORE INTO {HISTORY} SELECT ?, {ROW_LIST} FROM {CHECKPOINT} WHERE unarchived = 1",
            (position,),
        )
        self.con.execute(f"UPDATE {CHECKPOINT} SET unarchived = 0 WHERE unarchived = 1")
        self.con.execute(f"INSERT OR REPLACE INTO {ARCHIVES} VALUES (?, ?)", (position, count))

    def chain_hash_at(self, position: int) -> str:
        return chain_hash_at(self.con, position)

    def put_tracking(self, tracking: Tracking) -> None:
        self.con.execute(
            f"INSERT OR REPLACE INTO {TRACKING} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (VIEW, *tracking, tracking_checksum(tracking)),
        )


class SQLiteProjectionStore:
    """The tables in the ledger's SQLite file."""

    persistent = True

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self.path = path
        self.timeout = timeout
        self._con: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            self._con = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __del__(self) -> None:
        self.close()

    @contextmanager
    def _read_transaction(self) -> Iterator[sqlite3.Connection]:
        """A deferred transaction: one consistent read, no write lock."""
        con = self._connection()
        con.execute("BEGIN")
        try:
            yield con
        finally:
            con.execute("COMMIT")

    def read_current(self, live_only: bool = False) -> tuple[int, Tracking | None, list[Row]]:
        with self._lock, self._read_transaction() as con:
            top = _top(con)
            try:
                tracking = read_tracking(con)
            except sqlite3.OperationalError:  # no tables yet (or dropped)
                return top, None, []
            try:
                rows = _rows(con, live_only) if tracking is not None else []
            except sqlite3.OperationalError:  # the rows are gone: not what the row says
                rows = []
            return top, tracking, rows

    def read_tracking(self) -> Tracking | None:
        with self._lock, self._read_transaction() as con:
            try:
                return read_tracking(con)
            except sqlite3.OperationalError:  # no tables yet (or dropped)
                return None

    def read_at(self, position: int, fingerprint: str) -> tuple[int, int, list[Row]] | None:
        with self._lock, self._read_transaction() as con:
            try:
                t = read_tracking(con)
                if t is None or t.fingerprint != fingerprint or t.position > _top(con):
                    return None
                if t.position <= position:
                    return t.position, t.aggregates, _rows(con)
                found = con.execute(
                    f"SELECT position, aggregates FROM {ARCHIVES} WHERE position <= ? "
                    "ORDER BY position DESC LIMIT 1",
                    (position,),
                ).fetchone()
                if found is None:
                    return None
                point, count = found
                # The newest row of each aggregate at or before the point (SQLite takes the other
                # columns from the row that holds the MAX).
                rows = [
                    _row(r[1:])
                    for r in con.execute(
                        f"SELECT MAX(position), {ROW_LIST} FROM {HISTORY} WHERE position <= ? "
                        "GROUP BY originator_id",
                        (point,),
                    )
                ]
                rows.sort(key=lambda r: (r.born, r.originator_id))
                return point, count, rows
            except sqlite3.OperationalError:  # no tables
                return None

    def read_kept(self) -> tuple[list[int], list[Doc]]:
        with self._lock, self._read_transaction() as con:
            try:
                points = [int(p) for (p,) in con.execute(f"SELECT position FROM {ARCHIVES} ORDER BY position")]
                docs = [Doc(*r) for r in con.execute(f"SELECT vm, chains, doc, checksum FROM {DOCS} ORDER BY vm")]
            except sqlite3.OperationalError:  # no tables
                return [], []
            return points, docs

    def commit(self, update: Update, docs_for: DocsFor) -> str:
        with self._lock:
            return commit_update(update, docs_for, self._read_snapshot, self._write_transaction)

    @contextmanager
    def _read_snapshot(self) -> Iterator[SQLiteTables]:
        """For the short cut: a deferred transaction, no write lock."""
        with self._read_transaction() as con:
            try:
                yield SQLiteTables(con)
            except sqlite3.OperationalError as error:  # no tables, another shape, or busy
                raise TablesUnreadable(str(error)) from error

    @contextmanager
    def _write_transaction(self) -> Iterator[SQLiteTables]:
        con = self._connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            _ensure_schema(con)
            yield SQLiteTables(con)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    def wipe(self, seen: Tracking | None) -> None:
        with self._lock:
            con = self._connection()
            con.execute("BEGIN IMMEDIATE")
            try:
                try:
                    if read_tracking(con) != seen:
                        return  # someone else rebuilt it meanwhile
                except sqlite3.OperationalError:
                    pass
                for table in PROJECTION_TABLES:
                    con.execute(f"DROP TABLE IF EXISTS {table}")
            finally:
                con.execute("COMMIT")
