"""`snapledger show VM --json` without folding the ledger: the stored document's text, read
with sqlite3 alone (or one psycopg connection for PostgreSQL), trusted only when it is current.

Imported by the command line's entry module before anything heavy (no eventsourcing, no rich,
no domain): keep its imports light (tests/unit/test_projection.py checks it).
"""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import quote

from snapledger.adapters.checkpoint.rules import (
    CHAIN,
    DOCS,
    EVENTS,
    TRACKING,
    VIEW,
    Tracking,
    code_fingerprint,
    doc_checksum,
    tracking_from_row,
)
from snapledger.adapters.checkpoint.sqlite import read_tracking
from snapledger.adapters.eventstore.store_url import parse_store_url, sqlite_file
from snapledger.domain.errors import BadStoreUrl


def stored_show_text(url: str, vm: str) -> str | None:
    """`show VM --json`'s text from the persisted projection, if it is there and current: its
    position is the ledger's last, it was written by this code, and the row is intact. None in
    every other case (the caller folds the ledger instead). Never creates, changes or locks
    anything. SQLite with sqlite3 alone; PostgreSQL with one psycopg connection (no
    eventsourcing, no connection pool, no CREATE TABLE)."""
    if url.startswith(("postgresql://", "postgres://")):
        return _stored_show_text_postgres(url, vm)
    path = sqlite_file(url)
    if path is None or not os.path.isfile(path):
        return None
    try:
        con = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        con.execute("BEGIN")
        tracking = read_tracking(con)
        top = con.execute(f"SELECT MAX(rowid) FROM {EVENTS}").fetchone()[0]
        found = con.execute(
            f"SELECT chains, doc, checksum FROM {DOCS} WHERE vm = ?", (vm,)
        ).fetchone()
        con.execute("COMMIT")
    except sqlite3.Error:
        return None
    finally:
        con.close()
    return _current_text(vm, tracking, top, found)


def _current_text(
    vm: str, tracking: Tracking | None, top: int | None, found: tuple[str, str, int] | None
) -> str | None:
    """The stored document's text if the projection holding it is the ledger now."""
    if tracking is None or found is None or top is None or tracking.position != top:
        return None
    chains, text, checksum = found
    if tracking.fingerprint != code_fingerprint() or checksum != doc_checksum(vm, chains, text):
        return None
    return str(text)


# eventsourcing's PostgreSQL application recorder keeps the events in "<application name>_events"
# (LedgerApplication.name is "snapledger"), in the schema POSTGRES_SCHEMA names, else public.
POSTGRES_EVENTS = "snapledger_events"


def postgres_connection(url: str) -> dict[str, str] | None:
    """libpq's settings for a `postgresql://` store URL: the ones application.persistence_env
    gives eventsourcing (both read adapters/eventstore/store_url.py). None for any other URL."""
    try:
        store = parse_store_url(url)
    except BadStoreUrl:
        return None
    pg = store.postgres
    if pg is None:
        return None
    params = {"host": pg.host, "port": str(pg.port), "dbname": pg.dbname, "user": pg.user}
    if pg.password:  # else libpq looks in ~/.pgpass, as it does for eventsourcing
        params["password"] = pg.password
    return params


def _stored_show_text_postgres(url: str, vm: str) -> str | None:
    params = postgres_connection(url)
    if params is None:
        return None
    try:
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import make_conninfo
    except ImportError:  # no postgres extra: the normal path says so
        return None
    schema = os.environ.get("POSTGRES_SCHEMA", "").strip() or "public"

    def table(name: str) -> sql.Identifier:
        return sql.Identifier(schema, name)

    try:
        conninfo = make_conninfo("", **params)
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            # one snapshot for all three reads; REPEATABLE READ only while reading
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            present = conn.execute(
                "SELECT to_regclass(%s), to_regclass(%s), to_regclass(%s)",
                [table(n).as_string(conn) for n in (TRACKING, DOCS, POSTGRES_EVENTS)],
            ).fetchone()
            if present is None or None in present:
                return None
            row = conn.execute(
                sql.SQL(
                    "SELECT t.position, t.fingerprint, t.aggregates, t.archived, t.anchor, t.live_rows, t.checksum, "
                    "(SELECT c.hash FROM {} AS c WHERE c.position = t.position) "
                    "FROM {} AS t WHERE t.name = %s"
                ).format(table(CHAIN), table(TRACKING)),
                (VIEW,),
            ).fetchone()
            top_row = conn.execute(
                sql.SQL("SELECT MAX(notification_id) FROM {}").format(table(POSTGRES_EVENTS))
            ).fetchone()
            found = conn.execute(
                sql.SQL("SELECT chains, doc, checksum FROM {} WHERE vm = %s").format(table(DOCS)),
                (vm,),
            ).fetchone()
    except psycopg.Error:
        return None
    top = top_row[0] if top_row is not None else None
    found_doc = None if found is None else (found[0], found[1], found[2])
    # a row edited by hand reads as DAMAGED, which is no code's fingerprint: the normal path
    return _current_text(vm, tracking_from_row(row), top, found_doc)
