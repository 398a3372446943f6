"""The projection store in the ledger's SQLite file: the tables of rules.py beside
eventsourcing's `stored_events`, through a connection of its own, with sqlite3 alone.
`read_tracking` is also what `show`'s fast path reads (fast_show.py).
"""

from __future__ import annotations

import sqlite3
import threading

from snapledger.adapters.checkpoint.rules import (
    ARCHIVES,
    CHECKPOINT,
    COLUMNS,
    DOCS,
    EVENTS,
    HISTORY,
    PROJECTION_TABLES,
    RESET_TABLES,
    SAME,
    TRACKING,
    VIEW,
    WRITTEN,
    Doc,
    DocsFor,
    Row,
    Tracking,
    Update,
    archive_due,
    decide,
    doc_intact,
    tracking_checksum,
    tracking_from_row,
)

SCHEMA = (
    f"CREATE TABLE IF NOT EXISTS {TRACKING} (name TEXT PRIMARY KEY, position INTEGER NOT NULL, "
    "fingerprint TEXT NOT NULL, aggregates INTEGER NOT NULL, archived INTEGER NOT NULL, "
    "checksum INTEGER NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {CHECKPOINT} (originator_id TEXT PRIMARY KEY, "
    "originator_version INTEGER NOT NULL, born INTEGER NOT NULL, topic TEXT NOT NULL, "
    "state BLOB NOT NULL, checksum INTEGER NOT NULL, unarchived INTEGER NOT NULL DEFAULT 1)",
    f"CREATE INDEX IF NOT EXISTS {CHECKPOINT}_unarchived ON {CHECKPOINT} (unarchived) "
    "WHERE unarchived = 1",
    f"CREATE TABLE IF NOT EXISTS {DOCS} (vm TEXT PRIMARY KEY, chains TEXT NOT NULL, "
    "doc TEXT NOT NULL, checksum INTEGER NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {HISTORY} (position INTEGER NOT NULL, originator_id TEXT NOT NULL, "
    "originator_version INTEGER NOT NULL, born INTEGER NOT NULL, topic TEXT NOT NULL, "
    "state BLOB NOT NULL, checksum INTEGER NOT NULL, PRIMARY KEY (originator_id, originator_version))",
    f"CREATE INDEX IF NOT EXISTS {HISTORY}_position ON {HISTORY} (position)",
    f"CREATE TABLE IF NOT EXISTS {ARCHIVES} (position INTEGER PRIMARY KEY, aggregates INTEGER NOT NULL)",
)


class SQLiteProjectionStore:
    """The tables in the ledger's SQLite file, through a connection of its own (so that a
    write transaction can be `BEGIN IMMEDIATE`: it waits for the lock instead of failing when
    another process wrote since it began reading)."""

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

    def read_current(self) -> tuple[int, Tracking | None, list[Row]]:
        with self._lock:
            con = self._connection()
            con.execute("BEGIN")
            try:
                top = con.execute(f"SELECT MAX(rowid) FROM {EVENTS}").fetchone()[0] or 0
                try:
                    tracking = read_tracking(con)
                except sqlite3.OperationalError:  # no tables yet (or dropped)
                    return top, None, []
                try:
                    rows = self._rows(con, CHECKPOINT) if tracking is not None else []
                except sqlite3.OperationalError:  # the rows are gone: not what the row says
                    rows = []
                return top, tracking, rows
            finally:
                con.execute("COMMIT")

    def read_at(self, position: int, fingerprint: str) -> tuple[int, int, list[Row]] | None:
        with self._lock:
            con = self._connection()
            con.execute("BEGIN")
            try:
                t = read_tracking(con)
                top = con.execute(f"SELECT MAX(rowid) FROM {EVENTS}").fetchone()[0] or 0
                if t is None or t.fingerprint != fingerprint or t.position > top:
                    return None
                if t.position <= position:
                    return t.position, t.aggregates, self._rows(con, CHECKPOINT)
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
                    Row(*r[1:])
                    for r in con.execute(
                        f"SELECT MAX(position), originator_id, originator_version, born, topic, "
                        f"state, checksum FROM {HISTORY} WHERE position <= ? GROUP BY originator_id",
                        (point,),
                    )
                ]
                rows.sort(key=lambda r: (r.born, r.originator_id))
                return point, count, rows
            except sqlite3.OperationalError:  # no tables
                return None
            finally:
                con.execute("COMMIT")

    @staticmethod
    def _rows(con: sqlite3.Connection, table: str) -> list[Row]:
        return [
            Row(*r)
            for r in con.execute(
                f"SELECT originator_id, originator_version, born, topic, state, checksum "
                f"FROM {table} ORDER BY born, originator_id"
            )
        ]

    def commit(self, update: Update, docs_for: DocsFor) -> str:
        with self._lock:
            con = self._connection()
            if update.docs and self._unchanged(con, update):
                return SAME  # the common case of a reader: no write lock taken
            con.execute("BEGIN IMMEDIATE")
            try:
                _ensure_schema(con)
                stored = read_tracking(con)
                outcome = decide(stored, update)
                if outcome == SAME:
                    if update.docs:
                        self._put_docs(con, docs_for(self._chains(con), True))
                elif outcome == WRITTEN:
                    self._write(con, stored, update, docs_for)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            return outcome

    def _unchanged(self, con: sqlite3.Connection, update: Update) -> bool:
        con.execute("BEGIN")
        try:
            stored = read_tracking(con)
            if stored is None or decide(stored, update) != SAME:
                return False
            return len(self._chains(con)) == update.vms
        except sqlite3.OperationalError:
            return False
        finally:
            con.execute("COMMIT")

    def _write(
        self, con: sqlite3.Connection, stored: Tracking | None, update: Update, docs_for: DocsFor
    ) -> None:
        reset = update.full or stored is None or stored.fingerprint != update.fingerprint
        archive = archive_due(stored, update, reset)
        if reset:
            for table in RESET_TABLES:
                con.execute(f"DELETE FROM {table}")
        con.executemany(
            f"INSERT OR REPLACE INTO {CHECKPOINT} (originator_id, originator_version, born, topic, "
            "state, checksum) VALUES (?, ?, ?, ?, ?, ?)",
            update.rows,
        )
        if update.docs:
            self._put_docs(con, docs_for(self._chains(con), False))
        else:
            con.execute(f"DELETE FROM {DOCS}")
        count = con.execute(f"SELECT COUNT(*) FROM {CHECKPOINT}").fetchone()[0]
        archived = 0 if reset or stored is None else stored.archived
        if archive:  # the rows written since the last archive point (a row is rewritten unarchived)
            con.execute(
                f"INSERT OR IGNORE INTO {HISTORY} SELECT ?, originator_id, originator_version, born, "
                f"topic, state, checksum FROM {CHECKPOINT} WHERE unarchived = 1",
                (update.position,),
            )
            con.execute(f"UPDATE {CHECKPOINT} SET unarchived = 0 WHERE unarchived = 1")
            con.execute(f"INSERT OR REPLACE INTO {ARCHIVES} VALUES (?, ?)", (update.position, count))
            archived = update.position
        tracking = Tracking(update.position, update.fingerprint, count, archived)
        con.execute(
            f"INSERT OR REPLACE INTO {TRACKING} VALUES (?, ?, ?, ?, ?, ?)",
            (VIEW, *tracking, tracking_checksum(tracking)),
        )

    @staticmethod
    def _chains(con: sqlite3.Connection) -> dict[str, str]:
        """The stored documents' chains by VM; a damaged document counts as missing."""
        docs = (Doc(*row) for row in con.execute(f"SELECT vm, chains, doc, checksum FROM {DOCS}"))
        return {doc.vm: doc.chains for doc in docs if doc_intact(doc)}

    @staticmethod
    def _put_docs(con: sqlite3.Connection, docs: list[Doc]) -> None:
        con.executemany(f"INSERT OR REPLACE INTO {DOCS} VALUES (?, ?, ?, ?)", docs)

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


def _ensure_schema(con: sqlite3.Connection) -> None:
    """Inside a write transaction: the tables exist, with the columns this code uses."""
    for statement in SCHEMA:
        con.execute(statement)
    try:
        for table, columns in COLUMNS.items():
            con.execute(f"SELECT {', '.join(columns)} FROM {table} LIMIT 0")
    except sqlite3.OperationalError:
        for table in PROJECTION_TABLES:
            con.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in SCHEMA:
            con.execute(statement)


def read_tracking(con: sqlite3.Connection) -> Tracking | None:
    """The tracking row; one edited by hand comes back with the fingerprint DAMAGED, which no
    code has: it is then neither trusted nor built on."""
    found = con.execute(
        f"SELECT position, fingerprint, aggregates, archived, checksum FROM {TRACKING} "
        "WHERE name = ?",
        (VIEW,),
    ).fetchone()
    return tracking_from_row(found)

