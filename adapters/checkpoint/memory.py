"""The projection store of the `memory:` ledger: the same tables as dicts, kept with the
application's recorder (one per application object), behind one lock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from snapledger.adapters.checkpoint.rules import (
    SAME,
    WRITTEN,
    Doc,
    DocsFor,
    Row,
    Tracking,
    Update,
    archive_due,
    code_fingerprint,
    decide,
    doc_checksum,
    doc_intact,
)


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
