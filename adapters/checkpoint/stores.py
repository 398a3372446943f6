"""Where the persisted projection lives: the port, and its SQLite and memory stores (the
PostgreSQL one, with the same tables and rules, is adapters/checkpoint/postgres.py).

Nothing here imports eventsourcing or the domain: `snapledger show` asks `stored_show_text`
for a VM's document before anything heavy is imported. What the rows mean, and when to write
them, is adapters/checkpoint/persisted.py's business; this module only keeps the rules that must hold
inside one transaction (`decide`) and moves rows.

SQLite: tables prefixed `snapledger_` in the ledger's own file, beside eventsourcing's
`stored_events` (whose rowid is the ledger position):

- `snapledger_projection`: one row: the position P the projection has folded up to, the
  fingerprint of the code that wrote it, how many aggregates the checkpoint holds, and the last
  archive point.
- `snapledger_checkpoint`: every aggregate at P, one eventsourcing snapshot each.
- `snapledger_show_docs`: each VM's `show --json` text at P, and its disks' chains.
- `snapledger_checkpoint_history` and `snapledger_archive_points`: older checkpoints, kept every
  `every` positions for time travel; an aggregate's row is kept once per version.

PostgreSQL: the same tables in the ledger's schema, beside eventsourcing's events table (whose
`notification_id` is the ledger position).
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple, Protocol

TRACKING = "snapledger_projection"
CHECKPOINT = "snapledger_checkpoint"
DOCS = "snapledger_show_docs"
HISTORY = "snapledger_checkpoint_history"
ARCHIVES = "snapledger_archive_points"
EVENTS = "stored_events"  # eventsourcing's SQLite application recorder; rowid = ledger position
VIEW = "ledger_view"  # the one tracked projection's name

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


class Row(NamedTuple):
    """One aggregate in a checkpoint: an eventsourcing stored snapshot, and where it was born."""

    originator_id: str  # hex
    version: int
    born: int  # the position of the aggregate's first event (restore order)
    topic: str
    state: bytes
    checksum: int


class Doc(NamedTuple):
    vm: str
    chains: str  # the disks' chains (compact JSON): the part that depends on other VMs
    text: str  # exactly what `show VM --json` prints, without the final newline
    checksum: int


class Tracking(NamedTuple):
    position: int
    fingerprint: str
    aggregates: int
    archived: int  # the last archive point (0: none)


class Update(NamedTuple):
    """A checkpoint of the view at `position`, to write in one transaction."""

    position: int
    fingerprint: str
    base: int  # the stored position the writer's dirty rows are relative to; -1: none
    full: bool  # `rows` is every aggregate (else only those changed since `base`)
    rows: list[Row]
    aggregates: int  # how many aggregates the view holds
    vms: int  # how many VMs (a document each)
    docs: bool  # write documents (False: drop them; a catch-up step in the middle of the log)
    every: int  # keep an archive point every `every` positions (0: never)


# What a commit did.
WRITTEN = "written"
SAME = "same"  # the store already holds `position` (missing documents were filled in)
BEHIND = "behind"  # the store holds a later position: nothing written
NEEDS_FULL = "needs-full"  # the store holds nothing the dirty rows can be laid over

# docs_for(stored chains by VM, only_missing) -> the documents to write.
DocsFor = Callable[[dict[str, str], bool], list[Doc]]


def decide(stored: Tracking | None, update: Update) -> str:
    """The rule every store applies inside its write transaction. The position never moves
    back (two processes may race), and dirty rows are laid only over the state they were
    counted from or a later one."""
    if stored is not None and stored.fingerprint == update.fingerprint:
        if stored.position > update.position:
            return BEHIND
        if stored.position == update.position:
            return SAME
        if not update.full and stored.position < update.base:
            return NEEDS_FULL  # reset behind our back: our dirty set does not cover the gap
        return WRITTEN
    return WRITTEN if update.full else NEEDS_FULL


def archive_due(stored: Tracking | None, update: Update, outcome_full: bool) -> bool:
    last = 0 if stored is None or outcome_full else stored.archived
    return update.every > 0 and update.position // update.every > last // update.every


def row_checksum(originator_id: str, version: int, born: int, topic: str, state: bytes) -> int:
    """Catches a damaged or hand-edited row. Not a security measure: the hash chain protects
    the events, and the projection is only ever a cache of them."""
    return zlib.crc32(state, zlib.crc32(f"{originator_id}|{version}|{born}|{topic}|".encode()))


def tracking_checksum(t: Tracking) -> int:
    return zlib.crc32(f"{t.position}|{t.fingerprint}|{t.aggregates}|{t.archived}".encode())


DAMAGED = "damaged"  # the fingerprint of a tracking row whose checksum does not match


def doc_checksum(vm: str, chains: str, text: str) -> int:
    return zlib.crc32(f"{vm}\0{chains}\0{text}".encode())


def doc_intact(doc: Doc) -> bool:
    return doc.checksum == doc_checksum(doc.vm, doc.chains, doc.text)


def _sources() -> list[Path]:
    """domain/, projections/ and this room's own files (its encoding and its stores)."""
    here = Path(__file__).resolve().parent
    root = here.parent.parent  # the folder holding domain/ projections/ adapters/
    return [path for folder in (root / "domain", root / "projections", here) for path in sorted(folder.glob("*.py"))]


_fingerprint: str | None = None


def code_fingerprint() -> str:
    """Of the code that decides what a checkpoint and a document hold: domain/ (the
    aggregates' event bodies), projections/ (the view, projections/documents.py's `show`
    document) and this encoding. A projection written by other code is rebuilt rather than
    trusted; reading the files costs well under a millisecond."""
    global _fingerprint
    if _fingerprint is None:
        crc = 0
        for path in _sources():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            crc = zlib.crc32(data, zlib.crc32(f"{path.name}:{len(data)}:".encode(), crc))
        _fingerprint = f"1:{crc:08x}"
    return _fingerprint


# ---- the port ----------------------------------------------------------------------------------


class ProjectionStore(Protocol):
    persistent: bool  # False: nothing is kept, do not bother encoding anything

    def read_current(self) -> tuple[int, Tracking | None, list[Row]]:
        """The ledger's last position, the tracking row, and the checkpoint's rows (born order),
        as one consistent read."""
        ...

    def read_at(self, position: int, fingerprint: str) -> tuple[int, int, list[Row]] | None:
        """The newest checkpoint at or before `position`, an archive point or the current one:
        (its position, how many aggregates it holds, their rows in born order). None if there
        is none, or the projection was written by other code (`fingerprint`) or is ahead of
        the ledger."""
        ...

    def commit(self, update: Update, docs_for: DocsFor) -> str:
        """Write `update` in one transaction, by `decide`; return what was done."""
        ...

    def wipe(self, seen: Tracking | None) -> None:
        """Drop the whole projection, if its tracking row is still `seen` (found damaged)."""
        ...

    def close(self) -> None:
        """Let go of the store's own connection, if it has one (the ledger's file is then free
        for others in this process)."""
        ...


class MemoryProjectionStore:
    """The same tables as dicts, for the `memory:` store (one per application object)."""

    persistent = True

    def __init__(self, last_position: Callable[[], int]) -> None:
        self.last_position = last_position
        self.tracking: Tracking | None = None
        self.rows: dict[str, Row] = {}
        self.docs: dict[str, Doc] = {}
        self.history: dict[tuple[str, int], tuple[int, Row]] = {}  # (id, version) -> (position, row)
        self.archives: dict[int, int] = {}
        self._lock = threading.Lock()

    def read_current(self) -> tuple[int, Tracking | None, list[Row]]:
        with self._lock:
            rows = sorted(self.rows.values(), key=lambda r: (r.born, r.originator_id))
            return self.last_position(), self.tracking, rows

    def read_at(self, position: int, fingerprint: str) -> tuple[int, int, list[Row]] | None:
        with self._lock:
            t = self.tracking
            if t is None or t.fingerprint != fingerprint or t.position > self.last_position():
                return None
            if t.position <= position:
                rows = sorted(self.rows.values(), key=lambda r: (r.born, r.originator_id))
                return t.position, t.aggregates, rows
            points = [p for p in self.archives if p <= position]
            if not points:
                return None
            point = max(points)
            newest: dict[str, tuple[int, Row]] = {}
            for (oid, _), (at, row) in self.history.items():
                if at <= point and (oid not in newest or newest[oid][0] < at):
                    newest[oid] = (at, row)
            rows = sorted((r for _, r in newest.values()), key=lambda r: (r.born, r.originator_id))
            return point, self.archives[point], rows

    def commit(self, update: Update, docs_for: DocsFor) -> str:
        with self._lock:
            stored = self.tracking
            outcome = decide(stored, update)
            if outcome == SAME:
                if update.docs:
                    self._put_docs(docs_for(self._chains(), True))
                return SAME
            if outcome != WRITTEN:
                return outcome
            reset = update.full or stored is None or stored.fingerprint != update.fingerprint
            archive = archive_due(stored, update, reset)
            if reset:
                self.rows, self.docs, self.history, self.archives = {}, {}, {}, {}
            for row in update.rows:
                self.rows[row.originator_id] = row
            if update.docs:
                self._put_docs(docs_for(self._chains(), False))
            else:
                self.docs = {}
            archived = 0 if reset or stored is None else stored.archived
            if archive:
                for row in self.rows.values():
                    self.history.setdefault((row.originator_id, row.version), (update.position, row))
                self.archives[update.position] = len(self.rows)
                archived = update.position
            self.tracking = Tracking(update.position, update.fingerprint, len(self.rows), archived)
            return WRITTEN

    def _chains(self) -> dict[str, str]:
        return {doc.vm: doc.chains for doc in self.docs.values() if doc_intact(doc)}

    def _put_docs(self, docs: Iterable[Doc]) -> None:
        for doc in docs:
            self.docs[doc.vm] = doc

    def wipe(self, seen: Tracking | None) -> None:
        with self._lock:
            if self.tracking == seen:
                self.tracking = None
                self.rows, self.docs, self.history, self.archives = {}, {}, {}, {}

    def close(self) -> None:
        """Nothing to let go: the tables live as long as the application's recorder."""

    def doc_text(self, vm: str) -> str | None:
        """What `stored_show_text` answers for a SQLite file."""
        with self._lock:
            doc = self.docs.get(vm)
            if (
                self.tracking is None
                or doc is None
                or self.tracking.position != self.last_position()
                or self.tracking.fingerprint != code_fingerprint()
                or doc.checksum != doc_checksum(doc.vm, doc.chains, doc.text)
            ):
                return None
            return doc.text


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
            for table in (CHECKPOINT, DOCS, HISTORY, ARCHIVES):
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
                for table in (TRACKING, CHECKPOINT, DOCS, HISTORY, ARCHIVES):
                    con.execute(f"DROP TABLE IF EXISTS {table}")
            finally:
                con.execute("COMMIT")


# The columns each table must have; tables of another shape (older code) are dropped.
COLUMNS = {
    TRACKING: "name, position, fingerprint, aggregates, archived, checksum",
    CHECKPOINT: "originator_id, originator_version, born, topic, state, checksum, unarchived",
    DOCS: "vm, chains, doc, checksum",
    HISTORY: "position, originator_id, originator_version, born, topic, state, checksum",
    ARCHIVES: "position, aggregates",
}


def _ensure_schema(con: sqlite3.Connection) -> None:
    """Inside a write transaction: the tables exist, with the columns this code uses."""
    for statement in SCHEMA:
        con.execute(statement)
    try:
        for table, columns in COLUMNS.items():
            con.execute(f"SELECT {columns} FROM {table} LIMIT 0")
    except sqlite3.OperationalError:
        for table in COLUMNS:
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


def tracking_from_row(found: tuple[int, str, int, int, int] | None) -> Tracking | None:
    """(position, fingerprint, aggregates, archived, checksum) read from any store."""
    if found is None:
        return None
    tracking = Tracking(*found[:4])
    if found[4] != tracking_checksum(tracking):
        return tracking._replace(fingerprint=DAMAGED)
    return tracking
