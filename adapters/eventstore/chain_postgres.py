"""The hash chain on PostgreSQL (the `postgres` extra): same records as chain.py.

A save is one statement, one round trip: the function SAVE_FUNCTION takes the table lock that
orders every save (the library's `LOCK TABLE ... IN EXCLUSIVE MODE`, so positions are given in
commit order), inserts the events, continues the chain from the last record and returns the
positions; the statement's own transaction commits it. Everything that does not depend on the
position or the record before (each event's digest, the JSON of who/where/why) is computed here
before the statement is sent, so the lock is held only while the server works and commits,
never while a client process waits for its turn on a CPU between round trips (docs/performance.md,
"Load on one ledger"). The server hashes exactly the text `chain_hash` hashes (put together as
chain.chain_hash_text does); verify recomputes every hash in Python.

A module of its own so SQLite users never import psycopg.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.utils import retry
from psycopg import Cursor
from psycopg.errors import DuplicateObject, DuplicateTable
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier, Literal

from snapledger.adapters.eventstore.chain import (
    CHAIN_TABLE,
    HASH_HEAD,
    HASH_MID,
    HASH_SEP,
    UNKNOWN,
    chain_hash_tail,
    event_digests,
)
from snapledger.domain.ledger_hash import GENESIS, ChainRecord

# The advisory lock taken while the tables are created: (whose lock, the schema's key). Not the
# projection store's class (adapters/checkpoint/postgres.py): the two never nest.
CREATE_LOCK_CLASS = 0x5A1ED6E6
# The save's function; a new body gets a new name, so writers of two versions never replace
# each other's definition.
SAVE_FUNCTION = "snapledger_save_v2"  # v2: the operation column

# plpgsql. The text hashed for record i is chain.chain_hash_text's: chain_hash's JSON with its
# two holes filled here, the previous hash (hex) and the position (bigint as text, as Python
# writes an int). The tail (who/where/why) is JSON with non-ASCII escaped, so its bytes do not
# depend on the database's encoding. Events are inserted in the array's order (WITH ORDINALITY),
# so the i-th position is the i-th event's.
SAVE_FUNCTION_BODY = """
CREATE OR REPLACE FUNCTION {function}(
    p_events {event_type}[], p_digests text[], p_tail text, p_actor text, p_host text,
    p_tool_version text, p_reason text, p_operation text, p_lock_timeout text
) RETURNS SETOF bigint LANGUAGE plpgsql AS $body$
DECLARE
    v_positions bigint[];
    v_prev text;
    v_hash text;
BEGIN
    PERFORM set_config('lock_timeout', p_lock_timeout, true);
    LOCK TABLE {events} IN EXCLUSIVE MODE;
    NOTIFY {channel};
    WITH inserted AS (
        INSERT INTO {events} (originator_id, originator_version, topic, state)
        SELECT e.originator_id, e.originator_version, e.topic, e.state
        FROM unnest(p_events) WITH ORDINALITY AS e(originator_id, originator_version, topic, state, n)
        ORDER BY e.n
        RETURNING notification_id
    )
    SELECT array_agg(notification_id ORDER BY notification_id) INTO v_positions FROM inserted;
    SELECT c.hash INTO v_prev FROM {chain} AS c WHERE c.position < v_positions[1]
        ORDER BY c.position DESC LIMIT 1;
    v_prev := coalesce(v_prev, {genesis});
    FOR i IN 1 .. cardinality(v_positions) LOOP
        v_hash := encode(sha256(convert_to(
            {head} || v_prev || {mid} || v_positions[i] || {sep} || p_digests[i] || p_tail,
            'UTF8')), 'hex');
        INSERT INTO {chain} VALUES
            (v_positions[i], p_digests[i], v_prev, v_hash, p_actor, p_host, p_tool_version, p_reason,
             p_operation);
        v_prev := v_hash;
    END LOOP;
    RETURN QUERY SELECT unnest(v_positions);
END
$body$
"""


def schema_lock_key(schema: str) -> int:
    """The second key of snapledger's advisory locks: the schema's, as the signed 32-bit int
    pg_advisory_xact_lock(int, int) takes, so ledgers in two schemas don't wait for each other."""
    key = zlib.crc32(schema.encode())
    return key - (1 << 32) if key >= 1 << 31 else key


def _missing(curs: Cursor[DictRow], where: str, params: tuple[str, ...]) -> bool:
    """Whether no catalog row is `FROM where` (a lookup: creating or altering at every start
    would be a catalog write, and a lock, for every writer that starts)."""
    curs.execute(f"SELECT NOT EXISTS (SELECT FROM {where}) AS missing", params, prepare=False)
    found = curs.fetchone()
    return bool(found is not None and found["missing"])


class ChainedPostgresApplicationRecorder(PostgresApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._chain_table = Identifier(self.datastore.schema, CHAIN_TABLE)
        self.sql_create_statements.append(
            SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                "position bigint PRIMARY KEY, event_digest text NOT NULL, "
                "prev_hash text NOT NULL, hash text NOT NULL, actor text NOT NULL, "
                "host text NOT NULL, tool_version text NOT NULL, reason text, operation text)"
            ).format(self._chain_table)
        )

        schema = self.datastore.schema
        function = Identifier(schema, SAVE_FUNCTION)
        event_type = Identifier(schema, self.stored_event_type_name)
        self._create_save_function = SQL(SAVE_FUNCTION_BODY).format(
            function=function,
            event_type=event_type,
            events=Identifier(schema, self.events_table_name),
            chain=self._chain_table,
            channel=Identifier(self.channel_name),
            genesis=Literal(GENESIS),
            head=Literal(HASH_HEAD),
            mid=Literal(HASH_MID),
            sep=Literal(HASH_SEP),
        )
        self._save_statement = SQL(
            "SELECT position FROM {}(%s::{}[], %s::text[], %s, %s, %s, %s, %s, %s, %s) AS saved(position)"
        ).format(function, event_type)

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
            self._add_operation_column(curs)
            # Made once, not replaced at every start (a replaced function is a catalog write,
            # and a commit, under this lock, for every writer that starts).
            if _missing(curs, "pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = "
                        "p.pronamespace WHERE n.nspname = %s AND p.proname = %s",
                        (self.datastore.schema, SAVE_FUNCTION)):
                curs.execute(self._create_save_function, prepare=False)
        self.datastore.register_type_adapters()

    def _add_operation_column(self, curs: Cursor[DictRow]) -> None:
        """A ledger made before operations were recorded gets the chain's `operation` column:
        its older records read as NULL, and a writer of that version, inserting one value
        fewer, still fills the rest. Looked up first: an ALTER at every start would lock the
        table against every reader."""
        if _missing(curs, "information_schema.columns WHERE table_schema = %s AND table_name = %s "
                    "AND column_name = 'operation'", (self.datastore.schema, CHAIN_TABLE)):
            curs.execute(SQL("ALTER TABLE {} ADD COLUMN operation text").format(self._chain_table), prepare=False)

    def _lock_schema(self, curs: Cursor[DictRow]) -> None:
        curs.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)",
            (CREATE_LOCK_CLASS, schema_lock_key(self.datastore.schema)),
            prepare=False,
        )

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)  # as the library's
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """The events and their chain records in one statement (SAVE_FUNCTION), in its own
        transaction. A writer that loses a race gets the library's IntegrityError (a
        RecordConflictError), and nothing of its save is kept."""
        if not stored_events:
            return []
        by = kwargs.get("recorded_by") or UNKNOWN
        digests = event_digests(stored_events)  # before the lock: they need no position
        tail = chain_hash_tail(by)
        events = [
            self.construct_pg_stored_event(s.originator_id, s.originator_version, s.topic, s.state)
            for s in stored_events
        ]
        params = (
            events, digests, tail, by.actor, by.host, by.tool_version, by.reason, by.operation,
            f"{self.datastore.lock_timeout}s",
        )
        with self.datastore.get_connection() as conn, conn.cursor() as curs:
            curs.execute(self._save_statement, params, prepare=True)
            return [row["position"] for row in curs.fetchall()]

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
                    row.get("operation"),
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

    def recorded_position(self, originator_id: UUID, version: int) -> int | None:
        """The ledger position of that event (None: no such event)."""
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(
                SQL(
                    "SELECT notification_id FROM {} WHERE originator_id = %s AND originator_version = %s"
                ).format(Identifier(self.datastore.schema, self.events_table_name)),
                (originator_id, version),
            )
            found = curs.fetchone()
        return int(found["notification_id"]) if found else None


class ChainedPostgresFactory(PostgresFactory):
    application_recorder_class = ChainedPostgresApplicationRecorder
