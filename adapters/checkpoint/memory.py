"""The projection store of the `memory:` ledger: the same tables as dicts, kept with the
application's recorder (one per application object), behind one lock. It commits through the
shared flow of commit.py, its dicts being its tables."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from snapledger.adapters.checkpoint.commit import commit_update
from snapledger.adapters.checkpoint.rules import (
    Doc,
    DocsFor,
    Row,
    Tracking,
    Update,
    anchored,
    code_fingerprint,
    doc_checksum,
    doc_intact,
)


def _born_order(rows: Iterable[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r.born, r.originator_id))


class MemoryProjectionStore:
    """The projection's tables as dicts. Tests edit them to stage damage."""

    persistent = True

    def __init__(
        self, last_position: Callable[[], int], chain_hash_at: Callable[[int], str] = lambda _: ""
    ) -> None:
        self.last_position = last_position
        self.chain_hash_at = chain_hash_at
        self.tracking: Tracking | None = None  # as written (the reads check its anchor)
        self.rows: dict[str, Row] = {}
        self.docs: dict[str, Doc] = {}
        self.history: dict[tuple[str, int], tuple[int, Row]] = {}  # (id, version) -> (position, row)
        self.archives: dict[int, int] = {}
        self._lock = threading.Lock()

    def _checked(self) -> Tracking | None:
        """The tracking row against the chain's hash at its position now (rules.anchored)."""
        t = self.tracking
        return None if t is None else anchored(t, self.chain_hash_at(t.position))

    def read_current(self, live_only: bool = False) -> tuple[int, Tracking | None, list[Row]]:
        with self._lock:
            rows = [r for r in self.rows.values() if r.live or not live_only]
            return self.last_position(), self._checked(), _born_order(rows)

    def read_tracking(self) -> Tracking | None:
        with self._lock:
            return self._checked()

    def read_at(self, position: int, fingerprint: str) -> tuple[int, int, list[Row]] | None:
        with self._lock:
            t = self._checked()
            if t is None or t.fingerprint != fingerprint or t.position > self.last_position():
                return None
            if t.position <= position:
                return t.position, t.aggregates, _born_order(self.rows.values())
            points = [p for p in self.archives if p <= position]
            if not points:
                return None
            point = max(points)
            newest: dict[str, tuple[int, Row]] = {}
            for (oid, _), (at, row) in self.history.items():
                if at <= point and (oid not in newest or newest[oid][0] < at):
                    newest[oid] = (at, row)
            return point, self.archives[point], _born_order(r for _, r in newest.values())

    def read_kept(self) -> tuple[list[int], list[Doc]]:
        with self._lock:
            return sorted(self.archives), [self.docs[vm] for vm in sorted(self.docs)]

    def commit(self, update: Update, docs_for: DocsFor) -> str:
        with self._lock:  # the whole flow, short cut included: the dicts need no other lock
            return commit_update(update, docs_for, self._tables, self._tables)

    @contextmanager
    def _tables(self) -> Iterator[MemoryProjectionStore]:
        """Read snapshot and write transaction alike: the store itself, under `commit`'s lock
        (no rollback: a failure half-way is found by the next `load` and rebuilt)."""
        yield self

    def wipe(self, seen: Tracking | None) -> None:
        with self._lock:
            if self.tracking == seen:
                self.tracking = None
                self.clear()

    def close(self) -> None:
        """Nothing to let go: the tables live as long as the application's recorder."""

    def doc_text(self, vm: str) -> str | None:
        """What `stored_show_text` answers for a SQLite file."""
        with self._lock:
            doc = self.docs.get(vm)
            tracking = self._checked()
            if (
                tracking is None
                or doc is None
                or tracking.position != self.last_position()
                or tracking.fingerprint != code_fingerprint()
                or doc.checksum != doc_checksum(doc.vm, doc.chains, doc.text)
            ):
                return None
            return doc.text

    # ---- the tables, for commit.commit_update (called under `commit`'s lock) ----------------

    def stored_tracking(self) -> Tracking | None:
        return self._checked()

    def stored_chains(self) -> dict[str, str]:
        return {doc.vm: doc.chains for doc in self.docs.values() if doc_intact(doc)}

    def clear(self) -> None:
        self.rows, self.docs, self.history, self.archives = {}, {}, {}, {}

    def put_rows(self, rows: list[Row]) -> None:
        for row in rows:
            self.rows[row.originator_id] = row

    def put_docs(self, docs: list[Doc]) -> None:
        for doc in docs:
            self.docs[doc.vm] = doc

    def drop_docs(self) -> None:
        self.docs = {}

    def count_rows(self) -> tuple[int, int]:
        return len(self.rows), sum(1 for r in self.rows.values() if r.live)

    def keep_archive_point(self, position: int, count: int) -> None:
        # No "unarchived" mark here: every row is offered, and a version already kept stays,
        # which keeps exactly the rows written since the last point (as the SQL stores do).
        for row in self.rows.values():
            self.history.setdefault((row.originator_id, row.version), (position, row))
        self.archives[position] = count

    def put_tracking(self, tracking: Tracking) -> None:
        self.tracking = tracking
