"""Failures nothing above the command line foresaw, in one line (cli.main's last resort).

The store's own errors come first: sqlite3's, eventsourcing's persistence errors (into which it
wraps sqlite3's and psycopg's) and psycopg's. They mean the ledger can't be read or written:
damaged, locked too long, on a read-only filesystem, a server gone. That is the tool's own
trouble (exit 1), never drift. A writers' race (RecordConflictError) is settled in the service
before it gets here (exit 4).
"""

from __future__ import annotations

import sqlite3
import sys

# What SQLite's terse messages mean for a ledger.
HINTS = {
    "database disk image is malformed": "the ledger file is damaged: truncated or overwritten",
    "file is not a database": "the file is not a SQLite database",
    "unable to open database file": "it can't be opened",
    "attempt to write a readonly database": "it is read-only here",
    "database or disk is full": "the disk is full",
    "disk I/O error": "the system failed to read or write it",
}


def store_error(error: BaseException) -> bool:
    """Whether `error` is the store's own: sqlite3's, eventsourcing's persistence errors, or
    psycopg's (the last two only if their modules were imported at all)."""
    if isinstance(error, sqlite3.Error):
        return True
    persistence = sys.modules.get("eventsourcing.persistence")
    if persistence is not None and isinstance(error, persistence.PersistenceError):
        return True
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(error, psycopg.Error)


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def explained(said: str) -> str:
    """SQLite's message, with what it means for a ledger when that is known."""
    hint = next((h for text, h in HINTS.items() if text in said), None)
    return f"{said} ({hint})" if hint else said


def describe(error: BaseException, store: str | None) -> str:
    """The one line for `error`; `store` names the store the command used, if known."""
    if store_error(error):
        where = f"store {store}" if store else "the store"
        return f"{where}: {explained(one_line(error) or type(error).__name__)}"
    return f"unexpected failure ({type(error).__name__}: {one_line(error)})"
