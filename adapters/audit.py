"""`log` and `verify` over an opened store: what the command line (adapters/cli/audit_commands.py)
and the Python API (adapters/api.py) both run, each then printing or returning the document."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.eventstore.trail_index import trail_index_for
from snapledger.adapters.service.commands import Snapledger
from snapledger.domain.errors import BadInput, LedgerDamaged, UnknownVm
from snapledger.domain.ledger_hash import BEFORE_CHAIN
from snapledger.projections.documents import verify_document
from snapledger.projections.history import parse_time
from snapledger.projections.trail import EVENT_TYPES, TrailEntry, select, trail


def log_entries(
    app: LedgerApplication, vm: str | None = None, since: str | None = None,
    until: str | None = None, types: tuple[str, ...] = (),
) -> list[TrailEntry]:
    """The audit trail's entries, filtered: from the trail index if the store keeps one."""
    if vm is not None and not app.has_vm(vm):
        raise UnknownVm(f"no VM named {vm!r} in the ledger")
    unknown = [t for t in types if t not in EVENT_TYPES and t.rpartition(".")[2] not in EVENT_TYPES]
    if unknown:
        raise BadInput(f"unknown event type {unknown[0]!r}; one of: {', '.join(sorted(EVENT_TYPES))}")
    low = parse_time(since) if since else None
    high = parse_time(until) if until else None
    index = trail_index_for(app)
    if index is not None:
        return index.select(vm, low, high, types)
    chain = {record.position: record for record in app.chain()}
    return select(trail(app.events_after(0), chain), vm, low, high, types)


@dataclass(frozen=True)
class Verified:
    """What verify found: the hash chain's (and its caches') findings, the disks' drift, notes
    about events older than the chain, and the chain's head."""

    chain: list[str]
    disks: list[str]
    notes: list[str]
    position: int
    head_hash: str

    def document(self) -> dict[str, Any]:
        return verify_document(self.chain, self.disks, self.notes, self.position, self.head_hash)


def verify_ledger(
    app: LedgerApplication, service: Callable[[], Snapledger], vm: str | None = None,
    expect_head: str | None = None,
) -> Verified:
    """Check the event hash chain, the caches kept beside it, and the ledger against the disks.
    `service`: the service over `app`, made only once the raw rows are checked."""
    if expect_head is not None and not re.fullmatch(r"[0-9a-f]{64}", expect_head):
        raise BadInput("--expect-head takes the 64 hex digits `verify --head` printed")
    app.check_file()  # damage in pages no command read yet: exit 1, as the store's trouble
    checked = app.check_chain(expect_head)
    notes = [str(f) for f in checked if f.kind == BEFORE_CHAIN]
    chain = [str(f) for f in checked if f.kind != BEFORE_CHAIN]
    position, head_hash = app.head()
    index = trail_index_for(app) if not chain else None
    if index is not None:  # a cache must agree with the events just checked
        wrong = index.disagreements(trail(app.events_after(0)))
        if wrong:
            chain.append(f"the trail index (a cache) disagreed with the events at {len(wrong)} "
                         f"position(s) from {wrong[0]}; it was dropped and will be rebuilt")
    from snapledger.adapters.checkpoint.audit import projection_findings  # verify's alone
    from snapledger.adapters.checkpoint.persisted import PersistedProjection

    ledger = service()
    projection = ledger.projection  # before anything loads the view from it
    if not chain and isinstance(projection, PersistedProjection):
        chain += projection_findings(projection)  # an edit that kept every checksum right
    try:
        disks = ledger.verify(vm)
    except LedgerDamaged as damaged:
        disks = [f"the disks were not checked: {damaged}"]
    return Verified(chain, disks, notes, position, head_hash)
