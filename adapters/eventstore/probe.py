"""What lies where a SQLite store URL points, looked at before eventsourcing opens it.

eventsourcing opens any path it is given: it creates the file (and the tables) where nothing
was, writes its tables into a database that belongs to another program, and fails with a
traceback on a directory or a device. So the file is looked at first, read-only:

- nothing there: ABSENT (a reading command then acts on an empty ledger and creates nothing);
- a SQLite database with no tables at all: BLANK (as good as absent; a writing command sets it up);
- a SQLite database with snapledger's tables: LEDGER;
- a directory or a device: BadStoreUrl (exit 2); an empty file, another format, another
  program's database, or a file the system won't let us read: StoreUnusable (exit 1).

Damage inside a ledger (a truncated file) shows only when the damaged pages are read; the
command line maps SQLite's error then (adapters/eventstore/failures.py).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
from urllib.parse import quote

from snapledger.adapters.eventstore.failures import explained
from snapledger.adapters.host.processes import files_open_here
from snapledger.domain.errors import BadStoreUrl, StoreUnusable

ABSENT = "absent"
BLANK = "blank"
LEDGER = "ledger"

# eventsourcing's SQLite application recorder's table and the hash chain's (chain.py)
LEDGER_TABLES = frozenset({"stored_events", "snapledger_chain"})
SQLITE_HEADER = b"SQLite format 3\x00"
MALFORMED_PATH = (errno.ENAMETOOLONG, errno.ELOOP)


def probe_sqlite(path: str) -> str:
    """ABSENT, BLANK or LEDGER; raises for anything that can't be a ledger."""
    try:
        found = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return ABSENT
    except OSError as error:
        raise _unreachable(path, error) from None
    if stat.S_ISDIR(found.st_mode):
        raise BadStoreUrl(f"store {path} is a directory; the store URL must name the ledger's file")
    if not stat.S_ISREG(found.st_mode):
        raise BadStoreUrl(f"store {path} is not a regular file (a device, a pipe or a socket)")
    if found.st_size == 0:
        raise StoreUnusable(
            f"store {path} is an empty file (0 bytes), not a snapledger ledger; "
            "if a new ledger should start there, remove the file first"
        )
    # The header is read with a plain open() only when this process does not have the file open
    # already (another ledger object on it): closing any descriptor of a file drops every POSIX
    # lock the process holds on it, SQLite's included, and another process could then take the
    # file for itself under the open connections. A file SQLite has open here is a database.
    if (found.st_dev, found.st_ino) not in files_open_here():
        try:
            with open(path, "rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as error:
            raise _unreachable(path, error) from None
        if header != SQLITE_HEADER:
            raise StoreUnusable(f"store {path} is not a snapledger ledger: not a SQLite database")
    tables = _tables(path)
    if not tables:
        return BLANK
    if LEDGER_TABLES <= tables:
        return LEDGER
    shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    raise StoreUnusable(
        f"store {path} is a SQLite database but not a snapledger ledger (its tables: {shown})"
    )


def _tables(path: str) -> frozenset[str]:
    # Read and write access as eventsourcing will have it, else read-only (a read-only file is
    # still worth naming right); never `mode=rwc`: nothing is created.
    last: sqlite3.Error | None = None
    for mode in ("rw", "ro"):
        try:
            con = sqlite3.connect(f"file:{quote(path)}?mode={mode}", uri=True, isolation_level=None)
        except sqlite3.Error as error:
            last = error
            continue
        try:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            return frozenset(str(name) for (name,) in rows)
        except sqlite3.Error as error:
            last = error
        finally:
            con.close()
    raise StoreUnusable(f"store {path} can't be read: {explained(str(last))}")


def _unreachable(path: str, error: OSError) -> Exception:
    if error.errno in MALFORMED_PATH:
        return BadStoreUrl(f"store {path}: {error.strerror}")
    return StoreUnusable(f"store {path}: {error.strerror}")


def check_directory(path: str, create: bool) -> None:
    """Before a writing command creates the ledger file: its directory must be there (the
    default store's is made, as a first run needs it)."""
    directory = os.path.dirname(path)
    if os.path.isdir(directory):
        return
    if os.path.exists(directory):
        raise BadStoreUrl(f"store {path}: {directory} is not a directory")
    if not create:
        raise BadStoreUrl(
            f"store {path}: directory {directory} does not exist (create it first, or choose another --store)"
        )
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise StoreUnusable(f"can't create the store's directory {directory}: {error.strerror}") from None
