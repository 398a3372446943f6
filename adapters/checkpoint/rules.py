"""The checkpoint room's contract: the store port, what a store holds (rows, documents, the
tracking row), the rule a commit follows (`decide`, `archive_due`), the checksums, the code
fingerprint, and the tables' names and columns.

Pure: no database connection is opened here, and nothing heavy is imported (`show`'s fast path,
adapters/checkpoint/fast_show.py, reads these names before eventsourcing or the domain are
loaded). The stores are memory.py, sqlite.py and postgres.py; the one commit flow they share is
commit.py; what the rows mean, and when to write them, is persisted.py's business.

The tables, prefixed `snapledger_`, live beside the ledger's events: in its SQLite file (beside
eventsourcing's `stored_events`, whose rowid is the ledger position) or in its PostgreSQL schema
(beside the events table, whose `notification_id` is the ledger position):

- `snapledger_projection`: one row: the position P the projection has folded up to, the
  fingerprint of the code that wrote it, how many aggregates the checkpoint holds, the last
  archive point, and the anchor: the hash chain's hash at P when it was written. That hash
  covers every event up to P, so a checkpoint (and every archive point before it) is only ever
  used while the chain still says the same: events rewritten, or a ledger truncated and written
  again, make it unanchored, and it is rebuilt from the events.
- `snapledger_checkpoint`: every aggregate at P, one eventsourcing snapshot each.
- `snapledger_show_docs`: each VM's `show --json` text at P, and its disks' chains.
- `snapledger_checkpoint_history` and `snapledger_archive_points`: older checkpoints, kept every
  `every` positions for time travel; an aggregate's row is kept once per version.
"""

from __future__ import annotations

import importlib.util
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol

TRACKING = "snapledger_projection"
CHECKPOINT = "snapledger_checkpoint"
DOCS = "snapledger_show_docs"
HISTORY = "snapledger_checkpoint_history"
ARCHIVES = "snapledger_archive_points"
EVENTS = "stored_events"  # eventsourcing's SQLite application recorder; rowid = ledger position
CHAIN = "snapledger_chain"  # the hash chain beside the events (eventstore/chain.py's CHAIN_TABLE)
VIEW = "ledger_view"  # the one tracked projection's name

# A checkpoint row's columns, in Row's order.
ROW_COLUMNS = ("originator_id", "originator_version", "born", "topic", "state", "checksum", "live")
# Each table's columns, in the order the tables were created with (SQLite's history copy
# relies on it). A table found with other columns was written by older code: it is dropped.
COLUMNS: dict[str, tuple[str, ...]] = {
    TRACKING: ("name", "position", "fingerprint", "aggregates", "archived", "anchor", "live_rows", "checksum"),
    CHECKPOINT: (*ROW_COLUMNS, "unarchived"),
    DOCS: ("vm", "chains", "doc", "checksum"),
    HISTORY: ("position", *ROW_COLUMNS),
    ARCHIVES: ("position", "aggregates"),
}
PROJECTION_TABLES = tuple(COLUMNS)
# What a reset empties: everything but the tracking row, which the same commit rewrites.
RESET_TABLES = (CHECKPOINT, DOCS, HISTORY, ARCHIVES)


class Row(NamedTuple):
    """One aggregate in a checkpoint: an eventsourcing stored snapshot, and where it was born."""

    originator_id: str  # hex
    version: int
    born: int  # the position of the aggregate's first event (restore order)
    topic: str
    state: bytes
    checksum: int
    # A VM, or a registration some VM uses or an operation holds: what a process loads. The
    # others (images let go of) stay in the store; a view looks them up when it needs one.
    live: bool = True


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
    anchor: str  # the chain's hash at `position` when written ("": no chain record there)
    live_rows: int = 0  # how many of the rows are live (Row.live): what a process loads


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


# ---- checksums -----------------------------------------------------------------------------


def row_checksum(
    originator_id: str, version: int, born: int, topic: str, state: bytes, live: bool = True
) -> int:
    """Catches a damaged or hand-edited row. Not a security measure: `verify` compares every
    row with the events folded again (audit.py), as it recomputes the hash chain."""
    head = f"{originator_id}|{version}|{born}|{topic}|{int(live)}|"
    return zlib.crc32(state, zlib.crc32(head.encode()))


def row_well_typed(row: Row) -> bool:
    """Every column of the type this code writes (a hand edit can make a BLOB text, a number a
    string): only then is the checksum worth computing."""
    oid, version, born, topic, state, checksum, live = row
    return (
        isinstance(oid, str) and isinstance(topic, str) and isinstance(state, bytes)
        and all(type(n) is int for n in (version, born, checksum))
        and type(live) is bool
    )


def tracking_checksum(t: Tracking) -> int:
    return zlib.crc32(f"{t.position}|{t.fingerprint}|{t.aggregates}|{t.archived}|{t.anchor}|{t.live_rows}".encode())


DAMAGED = "damaged"  # the fingerprint of a tracking row whose checksum does not match
UNANCHORED = "unanchored"  # ... of one whose anchor is not the chain's hash at its position now


def tracking_from_row(found: tuple[int, str, int, int, str, int, int, str | None] | None) -> Tracking | None:
    """(position, fingerprint, aggregates, archived, anchor, live_rows, checksum, the chain's
    hash at position now) read from any store. A row edited by hand comes back with the fingerprint
    DAMAGED, one the chain no longer vouches for with UNANCHORED: no code has either, so such
    a checkpoint is neither trusted nor built on (it is rebuilt from the events)."""
    if found is None:
        return None
    position, fingerprint, aggregates, archived, anchor, live_rows = found[:6]
    if not (all(type(n) is int for n in (position, aggregates, archived, live_rows, found[6]))
            and isinstance(fingerprint, str) and isinstance(anchor, str)):
        return Tracking(0, DAMAGED, 0, 0, "", 0)  # a column of another type: edited by hand
    tracking = Tracking(position, fingerprint, aggregates, archived, anchor, live_rows)
    if found[6] != tracking_checksum(tracking):
        return tracking._replace(fingerprint=DAMAGED)
    return anchored(tracking, found[7] or "")


def anchored(tracking: Tracking, chain_hash: str) -> Tracking:
    """`tracking` as it stands against the chain's hash at its position now."""
    return tracking if tracking.anchor == chain_hash else tracking._replace(fingerprint=UNANCHORED)


def doc_checksum(vm: str, chains: str, text: str) -> int:
    return zlib.crc32(f"{vm}\0{chains}\0{text}".encode())


def doc_intact(doc: Doc) -> bool:
    return doc.checksum == doc_checksum(doc.vm, doc.chains, doc.text)


# ---- the code fingerprint ------------------------------------------------------------------


def _sources() -> list[Path]:
    """domain/, projections/ and this room's every file (the codec, the stores, the commit
    flow, the fast path), whole folders: a module added to any of them is covered; and the
    modules of eventsourcing that decide what an aggregate, an event and a snapshot are and how
    they are encoded (found without importing it: the fast path must stay light)."""
    here = Path(__file__).resolve().parent
    root = here.parent.parent  # the folder holding domain/ projections/ adapters/
    ours = [path for folder in (root / "domain", root / "projections", here) for path in sorted(folder.glob("*.py"))]
    spec = importlib.util.find_spec("eventsourcing")
    library = [Path(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    return ours + [folder / name for folder in library for name in _LIBRARY_MODULES]


_LIBRARY_MODULES = ("domain.py", "persistence.py", "utils.py", "application.py")


_fingerprint: str | None = None


def code_fingerprint() -> str:
    """Of the code that decides what a checkpoint and a document hold: domain/ (the
    aggregates' event bodies), projections/ (the view, projections/documents.py's `show`
    document) and this room (the encoding and the tables), eventsourcing's own modules, and the
    Python version. A projection written by other code is rebuilt rather than trusted, never
    decoded into newer classes; reading the files costs about a millisecond."""
    global _fingerprint
    if _fingerprint is None:
        crc = zlib.crc32(f"python {sys.version_info[0]}.{sys.version_info[1]}".encode())
        for path in _sources():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            crc = zlib.crc32(data, zlib.crc32(f"{path.name}:{len(data)}:".encode(), crc))
        _fingerprint = f"2:{crc:08x}"
    return _fingerprint


# ---- the port ------------------------------------------------------------------------------


class ProjectionStore(Protocol):
    persistent: bool  # False: nothing is kept, do not bother encoding anything

    def read_current(self, live_only: bool = False) -> tuple[int, Tracking | None, list[Row]]:
        """The ledger's last position, the tracking row, and the checkpoint's rows (born order;
        `live_only`: the live ones), as one consistent read."""
        ...

    def read_tracking(self) -> Tracking | None:
        """The tracking row alone (None if there is none, or no tables): a cheap look at where
        the stored projection is, without its rows."""
        ...

    def read_at(self, position: int, fingerprint: str) -> tuple[int, int, list[Row]] | None:
        """The newest checkpoint at or before `position`, an archive point or the current one:
        (its position, how many aggregates it holds, their rows in born order). None if there
        is none, or the projection was written by other code (`fingerprint`) or is ahead of
        the ledger."""
        ...

    def read_kept(self) -> tuple[list[int], list[Doc]]:
        """The archive points' positions (ascending) and every stored document, as one read:
        what `verify` compares with the events (nothing of it is checked here)."""
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
