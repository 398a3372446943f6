"""`log` and `verify` over an opened store: what the command line (adapters/cli/audit_commands.py)
and the Python API (adapters/api.py) both run, each then printing or returning the document."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.eventstore.trail_index import trail_index_for
from snapledger.adapters.service.commands import Snapledger
from snapledger.domain.errors import BadInput, LedgerDamaged, UnknownVm
from snapledger.domain.ledger_hash import BEFORE_CHAIN
from snapledger.projections.documents import verify_document
from snapledger.projections.history import parse_when
from snapledger.projections.operations import KINDS, OperationEntry, chosen, operations
from snapledger.projections.trail import EVENT_TYPES, TrailEntry, done_by, select, trail

T = TypeVar("T")


def log_entries(
    app: LedgerApplication, vm: str | None = None, since: str | None = None,
    until: str | None = None, types: tuple[str, ...] = (), by: str | None = None,
    count: int | None = None, reverse: bool = False,
) -> list[TrailEntry]:
    """The audit trail's events, filtered (`log --events`): from the trail index if the store
    keeps one. `by`: an actor or actor@host; `count`: the last N; `reverse`: newest first."""
    unknown = [t for t in types if not is_event_type(t)]
    if unknown:
        raise BadInput(f"unknown event type {unknown[0]!r}; one of: {', '.join(sorted(EVENT_TYPES))}")
    low, high = _times(since, until)
    _check_filters(by, count)
    _check_vm(app, vm)
    index = trail_index_for(app)
    if index is not None:
        entries = index.select(vm, low, high, types)
    else:
        entries = select(whole_trail(app), vm, low, high, types)
    if by is not None:
        entries = [e for e in entries if e.recorded_by and done_by(by, e.recorded_by.actor, e.recorded_by.host)]
    return last(entries, count, reverse)


def log_operations(
    app: LedgerApplication, vm: str | None = None, since: str | None = None,
    until: str | None = None, kinds: tuple[str, ...] = (), by: str | None = None,
    count: int | None = None, reverse: bool = False,
) -> list[OperationEntry]:
    """The audit trail by operation (`log --operations`), filtered as log_entries, by kind."""
    unknown = [t for t in kinds if t not in KINDS]
    if unknown:
        raise BadInput(
            f"unknown operation kind {unknown[0]!r}; one of: {', '.join(sorted(KINDS))} (event types go with --events)"
        )
    low, high = _times(since, until)
    _check_filters(by, count)
    _check_vm(app, vm)
    index = trail_index_for(app)
    # one VM's events are all its operations hold (times can't narrow them: an operation spans)
    of_vm = index.select(vm) if index is not None else select(whole_trail(app), vm)
    return last(chosen(operations(of_vm), vm, low, high, kinds, by), count, reverse)


def is_event_type(name: str) -> bool:
    return name in EVENT_TYPES or name.rpartition(".")[2] in EVENT_TYPES


def whole_trail(app: LedgerApplication) -> list[TrailEntry]:
    chain = {record.position: record for record in app.chain()}
    return trail(app.events_after(0), chain)


def last(items: list[T], count: int | None, reverse: bool) -> list[T]:
    """The last `count` (all: None), oldest first, or newest first with `reverse`."""
    kept = items[-count:] if count is not None else items
    return kept[::-1] if reverse else kept


def _times(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    now = datetime.now().astimezone()  # relative times and "today" are the local day's
    low, high = (parse_when(since, now) if since else None, parse_when(until, now) if until else None)
    if low is not None and high is not None and low > high:
        raise BadInput(f"--since {since} is after --until {until}: nothing could match")
    return low, high


def _check_filters(by: str | None, count: int | None) -> None:
    if by is not None and (not by.strip() or by.startswith("@") or by.endswith("@")):
        raise BadInput(f"--by {by!r}: give an actor, or actor@host")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise BadInput(f"the count of entries is a whole number from 1, not {count!r}")


def _check_vm(app: LedgerApplication, vm: str | None) -> None:
    if vm is not None and not app.has_vm(vm):
        raise UnknownVm(f"no VM named {vm!r} in the ledger")


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
