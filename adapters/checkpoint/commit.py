"""The one commit flow every projection store follows; each store supplies only its tables'
primitives (`StoredTables`, `WritableTables`) and the two transactions they run in.

1. The short cut: in a read snapshot, without any write lock, an update whose position the
   store already holds, with every VM's document intact, is SAME at once (the common case: a
   process that only read).
2. Otherwise, in the store's write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: the
   writers' advisory lock; memory: the store's lock, which its `commit` holds), with the tables
   made to this code's shape: `decide` against the tracking row read under that lock, then
   fill in missing documents (SAME) or write the update (WRITTEN). BEHIND and NEEDS_FULL write
   nothing.

A write: a reset empties the checkpoint, documents, history and archive points first; the
rows are laid over what is stored (a rewritten row is unarchived again); the documents are
written, or dropped for a catch-up step in the middle of the log; an archive point keeps the
rows written since the last one; the tracking row comes last.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from snapledger.adapters.checkpoint.rules import (
    SAME,
    WRITTEN,
    Doc,
    DocsFor,
    Row,
    Tracking,
    Update,
    archive_due,
    decide,
)


class TablesUnreadable(Exception):
    """A store's read snapshot can't tell (tables missing, of another shape, or busy): the
    short cut is not taken, and the write transaction sorts it out."""


class StoredTables(Protocol):
    """A store's projection tables, inside one of its transactions."""

    def stored_tracking(self) -> Tracking | None:
        """The tracking row (fingerprint DAMAGED if its checksum fails), None if there is none."""
        ...

    def stored_chains(self) -> dict[str, str]:
        """The stored documents' chains by VM; a damaged document counts as missing."""
        ...


class WritableTables(StoredTables, Protocol):
    """The same tables inside the store's write transaction, all there and of this code's shape."""

    def clear(self) -> None:
        """Empty every table but the tracking row (rules.RESET_TABLES)."""
        ...

    def put_rows(self, rows: list[Row]) -> None:
        """Insert or replace checkpoint rows, each marked as not archived yet."""
        ...

    def put_docs(self, docs: list[Doc]) -> None:
        """Insert or replace documents."""
        ...

    def drop_docs(self) -> None: ...

    def count_rows(self) -> tuple[int, int]:
        """How many aggregates the checkpoint holds now, and how many of them are live."""
        ...

    def keep_archive_point(self, position: int, count: int) -> None:
        """Copy the rows not archived yet into the history at `position` (a version already
        there stays), mark every row archived, and record the point with `count` aggregates."""
        ...

    def chain_hash_at(self, position: int) -> str:
        """The ledger's hash chain at `position` ("" if it has no record there): the anchor."""
        ...

    def put_tracking(self, tracking: Tracking) -> None:
        """Write the tracking row (with its checksum, where the store keeps one)."""
        ...


def commit_update(
    update: Update,
    docs_for: DocsFor,
    reading: Callable[[], AbstractContextManager[StoredTables]],
    writing: Callable[[], AbstractContextManager[WritableTables]],
) -> str:
    """Write `update` by `decide`, in `writing()`'s transaction; return what was done.
    `reading()` opens the snapshot for the short cut, and raises TablesUnreadable (on entry or
    from a read) where it can't tell."""
    if update.docs and _unchanged(update, reading):
        return SAME  # the common case of a reader: no write lock taken, nothing written
    with writing() as tables:
        stored = tables.stored_tracking()
        outcome = decide(stored, update)
        if outcome == SAME:
            if update.docs:
                tables.put_docs(docs_for(tables.stored_chains(), True))
        elif outcome == WRITTEN:
            _write(tables, stored, update, docs_for)
        return outcome


def _unchanged(update: Update, reading: Callable[[], AbstractContextManager[StoredTables]]) -> bool:
    try:
        with reading() as tables:
            stored = tables.stored_tracking()
            if stored is None or decide(stored, update) != SAME:
                return False
            return len(tables.stored_chains()) == update.vms
    except TablesUnreadable:
        return False


def _write(tables: WritableTables, stored: Tracking | None, update: Update, docs_for: DocsFor) -> None:
    reset = update.full or stored is None or stored.fingerprint != update.fingerprint
    archive = archive_due(stored, update, reset)
    if reset:
        tables.clear()
    tables.put_rows(update.rows)
    if update.docs:
        tables.put_docs(docs_for(tables.stored_chains(), False))
    else:
        tables.drop_docs()
    count, live = tables.count_rows()
    archived = 0 if reset or stored is None else stored.archived
    if archive:
        tables.keep_archive_point(update.position, count)
        archived = update.position
    # anchored to the chain as it stands under the same lock the events are written under
    anchor = tables.chain_hash_at(update.position)
    tables.put_tracking(Tracking(update.position, update.fingerprint, count, archived, anchor, live))
