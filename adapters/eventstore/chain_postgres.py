"""The hash chain on PostgreSQL (the `postgres` extra): same records as chain.py.

A module of its own so SQLite users never import psycopg.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from psycopg import Cursor
from psycopg.errors import DuplicateObject, DuplicateTable
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier

from snapledger.adapters.eventstore.chain import CHAIN_TABLE, new_records
from snapledger.domain.ledger_hash import GENESIS, ChainRecord

# The advisory lock taken while the tables are created: (whose lock, the schema's key). Not the
# projection store's class (adapters/checkpoint/postgres.py): the two never nest.
CREATE_LOCK_CLASS = 0x5A1ED6E6


def schema_lock_key(schema: str) -> int:
    """The second key of snapledger's advisory locks: the schema's, as the signed 32-bit int
    pg_advisory_xact_lock(int, int) takes, so ledgers in two schemas don't wait for each other."""
    key = zlib.crc32(schema.encode())
    return key - (1 << 32) if key >= 1 << 31 else key


class ChainedPostgresApplicationRecorder(PostgresApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chain_table = Identifier(self.datastore.schema, CHAIN_TABLE)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                "position bigint PRIMARY KEY, event_digest text NOT NULL, "
                "prev_hash text NOT NULL, hash text NOT NULL, actor text NOT NULL, "
                "host text NOT NULL, tool_version text NOT NULL, reason text)"
            ).format(self._chain_table)
        )

    def create_table(self) -> None:
        # Hosts starting together on an empty database: the library creates its composite type
        # in a transaction of its own, outside any lock, and a concurrent CREATE TYPE fails in
        # the catalog in more ways than the one it suppresses (a unique violation on pg_type,
        # "relation ... already exists"). Here everything, types included, is created under one
        # advisory lock (the library's _create_table, which makes the tables, is called only
        # from here). A type already there is found by trying (in a savepoint): a lookup
        # first is not enough, as the catalog cache may not yet have seen the commit of the
        # host that held the lock before us.
        with self.datastore.transaction(commit=True) as curs:
            self._lock_schema(curs)
            for statement in self.sql_create_statements:
                if "CREATE TYPE" in statement.as_string():
                    try:
                        with curs.connection.transaction():
                            curs.execute(statement, prepare=False)
                    except (DuplicateObject, DuplicateTable):
                        pass
            self._create_table(curs)
        self.datastore.register_type_adapters()

    def _lock_schema(self, curs: Cursor[DictRow]) -> None:
        curs.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)",
            (CREATE_LOCK_CLASS, schema_lock_key(self.datastore.schema)),
            prepare=False,
        )

    def _fetch_ids_after_insert_events(
        self, curs: Any, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        positions = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        if not positions:
            return positions
        # The library locked the events table before inserting: writers are serialised.
        curs.execute(
            SQL("SELECT hash FROM {} WHERE position < %s ORDER BY position DESC LIMIT 1").format(
                self._chain_table
            ),
            (positions[0],),
        )
        found = curs.fetchone()
        prev_hash = found["hash"] if found else GENESIS
        records = new_records(prev_hash, stored_events, positions, kwargs)
        curs.executemany(
            SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s, %s, %s, %s)").format(self._chain_table),
            [r.as_row() for r in records],
        )
        return positions

    def has_tables(self) -> bool:
        """Whether the ledger's tables are there (a reader, made with CREATE_TABLE off, found
        them rather than created them)."""
        with self.datastore.transaction(commit=False) as curs:
            names = [
                Identifier(self.datastore.schema, table).as_string(curs)
                for table in (self.events_table_name, CHAIN_TABLE)
            ]
            curs.execute("SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL", names)
            found = curs.fetchone()
        return bool(found and next(iter(found.values())))

    def select_chain(self, after: int = 0, stop: int | None = None) -> list[ChainRecord]:
        query: Composed = SQL("SELECT * FROM {} WHERE position > %s").format(self._chain_table)
        params: list[int] = [after]
        if stop is not None:
            query += SQL(" AND position <= %s")
            params.append(stop)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query + SQL(" ORDER BY position"), params)
            return [
                ChainRecord(
                    row["position"], row["event_digest"], row["prev_hash"], row["hash"],
                    row["actor"], row["host"], row["tool_version"], row["reason"],
                )
                for row in curs.fetchall()
            ]


    def recorded_host(self, originator_id: UUID, version: int) -> str | None:
        """The host the chain record of that event names (None: no such event or record)."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT c.host FROM {} e JOIN {} c ON c.position = e.notification_id "
                    "WHERE e.originator_id = %s AND e.originator_version = %s"
                ).format(Identifier(self.datastore.schema, self.events_table_name), self._chain_table),
                (originator_id, version),
            )
            found = curs.fetchone()
        return str(found["host"]) if found else None


class ChainedPostgresFactory(PostgresFactory):
    application_recorder_class = ChainedPostgresApplicationRecorder
