"""The projection store on PostgreSQL (the `postgres` extra): the tables of rules.py in the
schema of the ledger's database. Commits follow commit.py; this module supplies the SQL and the
locking.

A module of its own so SQLite users never import psycopg (like eventstore/chain_postgres.py). It
goes through the application recorder's own datastore (eventsourcing's PostgresDatastore: its
connection pool, in autocommit mode, and `transaction()` blocks), beside the events table whose
`notification_id` is the ledger position.

Concurrency, which SQLite gets from its one write lock:

- Writers (`commit`, `wipe`) take a transaction-scoped advisory lock first, so commits of
  several processes or hosts are ordered. The rest of the transaction runs at READ COMMITTED:
  each statement after the lock sees what the previous writer committed, so `decide` judges
  against the committed tracking row. The tables are created under that lock too (two
  CREATE TABLE IF NOT EXISTS can otherwise collide on pg_type's unique index).
- Readers take no lock: one REPEATABLE READ transaction, so the ledger's last position, the
  tracking row and the rows are one snapshot.
- A statement that fails aborts the whole PostgreSQL transaction, so nothing here tries a table
  and catches the error (as the SQLite store does): which tables exist, with which columns, is
  read from the catalog first (`_tables`). A table that is missing or of another shape reads as
  empty; the next commit drops and recreates it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from eventsourcing.application import Application
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

from snapledger.adapters.checkpoint.commit import TablesUnreadable, commit_update
from snapledger.adapters.checkpoint.rules import (
    ARCHIVES,
    CHAIN,
    CHECKPOINT,
    COLUMNS,
    DOCS,
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
from snapledger.adapters.eventstore.chain_postgres import schema_lock_key

# Each column's type as the catalog names it (format_type); a column has one type in every table.
COLUMN_TYPES = {
    "name": "text", "position": "bigint", "fingerprint": "text", "aggregates": "bigint",
    "archived": "bigint", "checksum": "bigint", "originator_id": "text",
    "originator_version": "bigint", "born": "bigint", "topic": "text", "state": "bytea",
    "unarchived": "boolean", "vm": "text", "chains": "text", "doc": "text", "anchor": "text",
    "live": "boolean", "live_rows": "bigint",
}
# Each table's columns and their types; a table of any other shape (older code, a hand edit)
# is dropped and made anew by the next commit.
TYPED_COLUMNS: dict[str, dict[str, str]] = {
    table: {column: COLUMN_TYPES[column] for column in columns} for table, columns in COLUMNS.items()
}
ROW_LIST = SQL(", ".join(ROW_COLUMNS))

# The advisory lock's first key says whose lock it is (advisory locks are per database, shared
# by every application in it); the second is the schema's, so ledgers in two schemas of one
# database do not wait for each other.
LOCK_CLASS = 0x5A1ED6E5  # a signed 32-bit int, as pg_advisory_xact_lock(int, int) wants


def _row(found: DictRow) -> Row:
    return Row(
        found["originator_id"], found["originator_version"], found["born"], found["topic"],
        bytes(found["state"]), found["checksum"], bool(found["live"]),
    )


def _doc(found: DictRow) -> Doc:
    return Doc(found["vm"], found["chains"], found["doc"], found["checksum"])


class PostgresTables:
    """The projection's tables in `schema`, inside one of the store's transactions (its reads,
    and commit.py's primitives)."""

    def __init__(self, curs: Cursor[DictRow], schema: str) -> None:
        self.curs = curs
        self.schema = schema

    def table(self, name: str) -> Identifier:
        return Identifier(self.schema, name)

    def stored_tracking(self) -> Tracking | None:
        """Checked against the chain's hash at its position now (rules.tracking_from_row)."""
        self.curs.execute(
            SQL("SELECT t.position, t.fingerprint, t.aggregates, t.archived, t.anchor, t.live_rows, t.checksum, "
                "(SELECT c.hash FROM {} AS c WHERE c.position = t.position) AS now "
                "FROM {} AS t WHERE t.name = %s").format(self.table(CHAIN), self.table(TRACKING)),
            (VIEW,),
        )
        found = self.curs.fetchone()
        if found is None:
            return None
        return tracking_from_row(
            (found["position"], found["fingerprint"], found["aggregates"], found["archived"],
             found["anchor"], found["live_rows"], found["checksum"], found["now"])
        )

    def chain_hash_at(self, position: int) -> str:
        self.curs.execute(
            SQL("SELECT hash FROM {} WHERE position = %s").format(self.table(CHAIN)), (position,)
        )
        found = self.curs.fetchone()
        return str(found["hash"]) if found is not None else ""

    def rows(self, live_only: bool = False) -> list[Row]:
        where = SQL("WHERE live " if live_only else "")
        self.curs.execute(
            SQL("SELECT {} FROM {} {}ORDER BY born, originator_id").format(ROW_LIST, self.table(CHECKPOINT), where),
            binary=True,  # bytea as it is, not hex: a fifth less time (psycopg's Python build)
        )
        return [_row(r) for r in self.curs.fetchall()]

    def stored_chains(self) -> dict[str, str]:
        self.curs.execute(SQL("SELECT vm, chains, doc, checksum FROM {}").format(self.table(DOCS)))
        docs = (_doc(r) for r in self.curs.fetchall())
        return {doc.vm: doc.chains for doc in docs if doc_intact(doc)}

    def clear(self) -> None:
        for name in RESET_TABLES:
            self.curs.execute(SQL("DELETE FROM {}").format(self.table(name)))

    def put_rows(self, rows: list[Row]) -> None:
        if not rows:
            return
        # A rewritten row is unarchived again: the next archive point keeps its new version.
        self.curs.executemany(
            SQL("INSERT INTO {} ({}, unarchived) VALUES (%s, %s, %s, %s, %s, %s, %s, true) "
                "ON CONFLICT (originator_id) DO UPDATE SET "
                "originator_version = EXCLUDED.originator_version, born = EXCLUDED.born, "
                "topic = EXCLUDED.topic, state = EXCLUDED.state, "
                "checksum = EXCLUDED.checksum, live = EXCLUDED.live, unarchived = true").format(self.table(CHECKPOINT), ROW_LIST),
            rows,
        )

    def put_docs(self, docs: list[Doc]) -> None:
        if not docs:
            return
        self.curs.executemany(
            SQL("INSERT INTO {} (vm, chains, doc, checksum) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (vm) DO UPDATE SET chains = EXCLUDED.chains, doc = EXCLUDED.doc, "
                "checksum = EXCLUDED.checksum").format(self.table(DOCS)),
            docs,
        )

    def drop_docs(self) -> None:
        self.curs.execute(SQL("DELETE FROM {}").format(self.table(DOCS)))

    def count_rows(self) -> tuple[int, int]:
        self.curs.execute(
            SQL("SELECT COUNT(*) AS count, COUNT(*) FILTER (WHERE live) AS live FROM {}").format(self.table(CHECKPOINT))
        )
        counted = self.curs.fetchone()
        return (int(counted["count"]), int(counted["live"])) if counted is not None else (0, 0)

    def keep_archive_point(self, position: int, count: int) -> None:
        self.curs.execute(
            SQL("INSERT INTO {} (position, {}) SELECT %s, {} FROM {} WHERE unarchived "
                "ON CONFLICT DO NOTHING").format(
                self.table(HISTORY), ROW_LIST, ROW_LIST, self.table(CHECKPOINT)
            ),
            (position,),
        )
        self.curs.execute(
            SQL("UPDATE {} SET unarchived = false WHERE unarchived").format(self.table(CHECKPOINT))
        )
        self.curs.execute(
            SQL("INSERT INTO {} (position, aggregates) VALUES (%s, %s) ON CONFLICT (position) "
                "DO UPDATE SET aggregates = EXCLUDED.aggregates").format(self.table(ARCHIVES)),
            (position, count),
        )

    def put_tracking(self, tracking: Tracking) -> None:
        self.curs.execute(
            SQL("INSERT INTO {} (name, position, fingerprint, aggregates, archived, anchor, live_rows, "
                "checksum) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
                "position = EXCLUDED.position, fingerprint = EXCLUDED.fingerprint, "
                "aggregates = EXCLUDED.aggregates, archived = EXCLUDED.archived, "
                "anchor = EXCLUDED.anchor, live_rows = EXCLUDED.live_rows, checksum = EXCLUDED.checksum").format(self.table(TRACKING)),
            (VIEW, *tracking, tracking_checksum(tracking)),
        )


class PostgresProjectionStore:
    """The projection's tables in the ledger's PostgreSQL schema."""

    persistent = True

    def __init__(
        self, recorder: PostgresApplicationRecorder, owner: object = None, lock_timeout: float = 10.0
    ) -> None:
        # The application closes the datastore's connection pool when it is collected: a store
        # that outlives it would find the pool closed, so it keeps it.
        self.owner = owner
        self.datastore: PostgresDatastore = recorder.datastore
        self.schema = self.datastore.schema
        self.events_table_name = recorder.events_table_name
        self.events_table = Identifier(self.schema, self.events_table_name)
        self.lock_key = schema_lock_key(self.schema)
        # How long a writer waits for another's lock before giving up (the save then fails,
        # harmlessly: the next reader catches up), like SQLite's busy timeout.
        self.lock_timeout_ms = int(lock_timeout * 1000)

    @classmethod
    def of(cls, app: Application[Any]) -> PostgresProjectionStore:
        """The store of an application on PostgreSQL, in its recorder's datastore."""
        recorder = app.recorder
        if not isinstance(recorder, PostgresApplicationRecorder):
            raise TypeError(f"not a PostgreSQL recorder: {type(recorder).__name__}")
        return cls(recorder, owner=app)

    def close(self) -> None:
        """Nothing of its own to let go: the connections are the application's pool's."""

    def _table(self, name: str) -> Identifier:
        return Identifier(self.schema, name)

    # ---- reading -------------------------------------------------------------------------

    def read_current(self, live_only: bool = False) -> tuple[int, Tracking | None, list[Row]]:
        with self.datastore.transaction(commit=False) as curs:
            tables = PostgresTables(curs, self.schema)
            usable = self._snapshot(curs)
            top = self._top(curs, usable)
            tracking = tables.stored_tracking() if TRACKING in usable else None
            if tracking is None:
                return top, None, []
            # Rows gone while the tracking row stays are not what the row says: `load` sees
            # the count differ and drops the projection.
            rows = tables.rows(live_only) if CHECKPOINT in usable else []
            return top, tracking, rows

    def read_tracking(self) -> Tracking | None:
        with self.datastore.transaction(commit=False) as curs:
            if TRACKING not in self._snapshot(curs):
                return None
            return PostgresTables(curs, self.schema).stored_tracking()

    def read_kept(self) -> tuple[list[int], list[Doc]]:
        with self.datastore.transaction(commit=False) as curs:
            usable = self._snapshot(curs)
            points: list[int] = []
            if ARCHIVES in usable:
                curs.execute(SQL("SELECT position FROM {} ORDER BY position").format(self._table(ARCHIVES)))
                points = [int(r["position"]) for r in curs.fetchall()]
            docs: list[Doc] = []
            if DOCS in usable:
                curs.execute(SQL("SELECT vm, chains, doc, checksum FROM {} ORDER BY vm").format(self._table(DOCS)))
                docs = [_doc(r) for r in curs.fetchall()]
            return points, docs

    def read_at(self, position: int, fingerprint: str) -> tuple[int, int, list[Row]] | None:
        with self.datastore.transaction(commit=False) as curs:
            tables = PostgresTables(curs, self.schema)
            usable = self._snapshot(curs)
            if TRACKING not in usable:
                return None
            t = tables.stored_tracking()
            if t is None or t.fingerprint != fingerprint or t.position > self._top(curs, usable):
                return None
            if t.position <= position:
                if CHECKPOINT not in usable:
                    return None
                return t.position, t.aggregates, tables.rows()
            if ARCHIVES not in usable or HISTORY not in usable:
                return None
            curs.execute(
                SQL("SELECT position, aggregates FROM {} WHERE position <= %s "
                    "ORDER BY position DESC LIMIT 1").format(self._table(ARCHIVES)),
                (position,),
            )
            found = curs.fetchone()
            if found is None:
                return None
            point, count = found["position"], found["aggregates"]
            # The newest row of each aggregate at or before the point.
            curs.execute(
                SQL("SELECT DISTINCT ON (originator_id) {} FROM {} WHERE position <= %s "
                    "ORDER BY originator_id, position DESC").format(ROW_LIST, self._table(HISTORY)),
                (point,),
                binary=True,
            )
            rows = [_row(r) for r in curs.fetchall()]
            rows.sort(key=lambda r: (r.born, r.originator_id))
            return point, count, rows

    def _snapshot(self, curs: Cursor[DictRow]) -> set[str]:
        """Start a read-only REPEATABLE READ snapshot; the projection's usable tables."""
        curs.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return self._usable(self._tables(curs))

    def _tables(self, curs: Cursor[DictRow]) -> dict[str, dict[str, str]]:
        """The projection's tables and the events table that exist in the schema, with their
        columns: the catalog answers without an error for a table that is not there."""
        curs.execute(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) AS type "
            "FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
            "AND NOT a.attisdropped "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)",
            (self.schema, [*PROJECTION_TABLES, self.events_table_name]),
        )
        found: dict[str, dict[str, str]] = {}
        for r in curs.fetchall():
            found.setdefault(r["relname"], {})[r["attname"]] = r["type"]
        return found

    def _usable(self, found: dict[str, dict[str, str]]) -> set[str]:
        usable = {name for name, columns in TYPED_COLUMNS.items() if found.get(name) == columns}
        if self.events_table_name in found:
            usable.add(self.events_table_name)
        return usable

    def _top(self, curs: Cursor[DictRow], usable: set[str]) -> int:
        """The ledger's last position (0: no events, or no events table yet)."""
        if self.events_table_name not in usable:
            return 0
        curs.execute(SQL("SELECT MAX(notification_id) AS top FROM {}").format(self.events_table))
        found = curs.fetchone()
        return int(found["top"] or 0) if found is not None else 0

    # ---- writing -------------------------------------------------------------------------

    def commit(self, update: Update, docs_for: DocsFor) -> str:
        return commit_update(update, docs_for, self._read_snapshot, self._write_transaction)

    @contextmanager
    def _read_snapshot(self) -> Iterator[PostgresTables]:
        """For the short cut: no lock, nothing written."""
        with self.datastore.transaction(commit=False) as curs:
            usable = self._snapshot(curs)
            if TRACKING not in usable or DOCS not in usable:
                raise TablesUnreadable("no usable tracking or documents table")
            yield PostgresTables(curs, self.schema)

    @contextmanager
    def _write_transaction(self) -> Iterator[PostgresTables]:
        """Committed when the block ends, rolled back if it raises (the datastore's transaction)."""
        with self.datastore.transaction(commit=True) as curs:
            self._lock_writers(curs)
            self._ensure_schema(curs)
            yield PostgresTables(curs, self.schema)

    def _lock_writers(self, curs: Cursor[DictRow]) -> None:
        """Order this transaction after every other writer's (released at commit/rollback)."""
        curs.execute(SQL("SET LOCAL lock_timeout = {}").format(f"{self.lock_timeout_ms}ms"))
        curs.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, self.lock_key))

    def _ensure_schema(self, curs: Cursor[DictRow]) -> None:
        """Under the writers' lock: the tables exist, with the columns this code uses."""
        found = self._tables(curs)
        if any(name in found and found[name] != TYPED_COLUMNS[name] for name in PROJECTION_TABLES):
            for name in PROJECTION_TABLES:
                curs.execute(SQL("DROP TABLE IF EXISTS {}").format(self._table(name)))
        elif all(name in found for name in PROJECTION_TABLES):
            return  # the usual case: no DDL at all
        for statement in self._schema():
            curs.execute(statement)

    def _schema(self) -> list[Composed]:
        def create(name: str, extra: str) -> Composed:
            columns = ", ".join(f"{c} {t} NOT NULL" for c, t in TYPED_COLUMNS[name].items())
            return SQL("CREATE TABLE IF NOT EXISTS {} ({}{})").format(self._table(name), SQL(columns), SQL(extra))

        return [
            create(TRACKING, ", PRIMARY KEY (name)"),
            create(CHECKPOINT, ", PRIMARY KEY (originator_id)"),
            SQL("CREATE INDEX IF NOT EXISTS {} ON {} (originator_id) WHERE unarchived").format(
                Identifier(f"{CHECKPOINT}_unarchived"), self._table(CHECKPOINT)
            ),
            create(DOCS, ", PRIMARY KEY (vm)"),
            create(HISTORY, ", PRIMARY KEY (originator_id, originator_version)"),
            SQL("CREATE INDEX IF NOT EXISTS {} ON {} (position)").format(
                Identifier(f"{HISTORY}_position"), self._table(HISTORY)
            ),
            create(ARCHIVES, ", PRIMARY KEY (position)"),
        ]

    def wipe(self, seen: Tracking | None) -> None:
        with self.datastore.transaction(commit=True) as curs:
            self._lock_writers(curs)
            found = self._tables(curs)
            if TRACKING in self._usable(found) and PostgresTables(curs, self.schema).stored_tracking() != seen:
                return  # someone else rebuilt it meanwhile
            # Emptied rather than dropped where the shape is right: a reader's snapshot keeps
            # its rows, and no reader trips over a table that vanished between two statements.
            for name in PROJECTION_TABLES:
                if name not in found:
                    continue
                statement = "DELETE FROM {}" if found[name] == TYPED_COLUMNS[name] else "DROP TABLE {}"
                curs.execute(SQL(statement).format(self._table(name)))
