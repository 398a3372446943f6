"""The ledger's hash chain: each recorded event commits to the one before it in ledger order.

A chain record sits beside every stored event (same position, written in the same transaction):
who recorded it, from which host, with which tool version and why, the digest of the stored
event's bytes, the hash of the previous record, and its own hash over all of that. Editing,
deleting, inserting or reordering stored events or their records breaks the chain at a position
`check_chain` can name; truncating the tail is caught by comparing with a head kept elsewhere.

Pure functions over plain values (hashlib only): the adapters read and write the rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

GENESIS = "0" * 64  # the "previous hash" of the first event
BEFORE_CHAIN = "before-chain"  # a note, not tampering: events older than the chain itself


# The host of a record made without a recording context (a library user who gave none): it names
# no machine, so a VM adopted that way belongs to no host in particular (VirtualMachine.lives_on).
UNKNOWN_HOST = "unknown"


@dataclass(frozen=True)
class RecordedBy:
    """Who, where and why: the context an event was recorded in (not part of the domain fact)."""

    actor: str
    host: str
    tool_version: str
    reason: str | None = None
    # The operation (one command's change, semantics.md "The trail") its events belong to; None
    # in records made before operations were recorded, and by a library user who began none.
    operation: str | None = None


@dataclass(frozen=True)
class StoredEventRow:
    """A stored event as the store holds it: the bytes the chain commits to."""

    position: int
    originator_id: str  # hex, no dashes
    originator_version: int
    topic: str
    state: bytes


# Before the text of a state stored as TEXT: no recorder writes a state as anything but bytes, so
# such a row was changed by hand even when its characters are the original bytes, and it must
# not hash like them.
TEXT_STATE = b"\x00stored as text:"


def stored_event_row(
    position: int, originator_id: object, originator_version: int, topic: str, state: bytes | str
) -> StoredEventRow:
    """A row from what a recorder holds (the originator id as a UUID or as text)."""
    oid = getattr(originator_id, "hex", None)
    held = TEXT_STATE + state.encode("utf-8", "surrogateescape") if isinstance(state, str) else bytes(state)
    return StoredEventRow(
        position, oid if isinstance(oid, str) else str(originator_id), originator_version, topic, held
    )


@dataclass(frozen=True)
class ChainRecord:
    position: int
    event_digest: str
    prev_hash: str
    hash: str
    actor: str
    host: str
    tool_version: str
    reason: str | None
    operation: str | None = None  # a column added later: last, so older rows read as None

    @property
    def recorded_by(self) -> RecordedBy:
        return RecordedBy(self.actor, self.host, self.tool_version, self.reason, self.operation)

    def as_row(self) -> tuple[int, str, str, str, str, str, str, str | None, str | None]:
        """The columns of the chain table, in order."""
        return (
            self.position, self.event_digest, self.prev_hash, self.hash,
            self.actor, self.host, self.tool_version, self.reason, self.operation,
        )


def event_digest(originator_id: str, originator_version: int, topic: str, state: bytes) -> str:
    head = json.dumps([originator_id, originator_version, topic]).encode()
    return hashlib.sha256(head + b"\n" + state).hexdigest()


def row_digest(row: StoredEventRow) -> str:
    return event_digest(row.originator_id, row.originator_version, row.topic, row.state)


def hashed_context(by: RecordedBy) -> list[str | None]:
    """What of the recording context a record's hash covers: the operation only when there is
    one, so records made before operations were recorded keep the hash they were given."""
    fields = [by.actor, by.host, by.tool_version, by.reason]
    return fields if by.operation is None else [*fields, by.operation]


def chain_hash(prev_hash: str, position: int, digest: str, by: RecordedBy) -> str:
    body = json.dumps([prev_hash, position, digest, *hashed_context(by)], separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def chain_records(
    prev_hash: str, rows: Iterable[StoredEventRow], by: RecordedBy
) -> list[ChainRecord]:
    """The records for newly stored `rows` (in ledger order), continuing from `prev_hash`."""
    records = []
    for row in rows:
        digest = row_digest(row)
        record_hash = chain_hash(prev_hash, row.position, digest, by)
        records.append(
            ChainRecord(
                row.position, digest, prev_hash, record_hash,
                by.actor, by.host, by.tool_version, by.reason, by.operation,
            )
        )
        prev_hash = record_hash
    return records


@dataclass(frozen=True)
class ChainFinding:
    position: int
    kind: str  # edited | deleted | inserted | reordered | broken | record-edited | truncated
    # | before-chain (a note: see BEFORE_CHAIN)
    detail: str

    def __str__(self) -> str:
        return f"ledger position {self.position}: {self.kind}: {self.detail}"


def check_chain(
    rows: Sequence[StoredEventRow],
    records: Sequence[ChainRecord],
    expect_head: str | None = None,
    linked: bool = True,
) -> list[ChainFinding]:
    """Recompute the chain over `rows` (stored events) and `records` (chain records), both in
    position order; name each position where they disagree. `linked=False` checks each record
    on its own (a one-VM export holds every record but not the links between them)."""
    findings: list[ChainFinding] = []
    by_position = {r.position: r for r in records}
    digests = {row.position: row_digest(row) for row in rows}
    recorded_at = {r.event_digest: r.position for r in records}
    event_positions = set(digests)

    for record in records:
        if record.position not in event_positions:
            findings.append(ChainFinding(
                record.position, "deleted", "the chain records an event the store no longer has"
            ))
    # A ledger begun by a snapledger without the chain: the events before its first record
    # (which then starts from GENESIS) are older, not inserted. Named once, as a note.
    chain_start = records[0].position if records and records[0].prev_hash == GENESIS else None
    if not records:
        chain_start = max(digests, default=0) + 1
    older = [p for p in digests if chain_start is not None and p < chain_start]
    if older:
        findings.append(ChainFinding(
            max(older), BEFORE_CHAIN,
            f"{len(older)} event(s) from position {min(older)} were recorded before this ledger "
            "had a hash chain: they are not covered by it",
        ))
    for row in rows:
        found = by_position.get(row.position)
        digest = digests[row.position]
        if found is None:
            if row.position not in older:
                findings.append(ChainFinding(
                    row.position, "inserted", "a stored event with no chain record"
                ))
            continue
        if digest != found.event_digest:
            origin = recorded_at.get(digest)
            if origin is not None and origin != row.position:
                findings.append(ChainFinding(
                    row.position, "reordered", f"this event was recorded at position {origin}"
                ))
            else:
                findings.append(ChainFinding(
                    row.position, "edited", "the stored event's bytes differ from what was recorded"
                ))
        elif chain_hash(found.prev_hash, found.position, found.event_digest, found.recorded_by) != found.hash:
            findings.append(ChainFinding(
                row.position, "record-edited", "the chain record (who/where/why or hash) was changed"
            ))

    prev = GENESIS
    for record in records if linked else ():
        if record.prev_hash != prev:
            findings.append(ChainFinding(
                record.position, "broken",
                "does not follow the record before it: events were deleted, inserted or rewritten",
            ))
        prev = record.hash

    if expect_head is not None:
        heads = {r.hash: r.position for r in records}
        if expect_head not in heads:
            last = records[-1].position if records else 0
            findings.append(ChainFinding(
                last, "truncated",
                f"the expected head {expect_head[:16]}… is not in the chain: "
                "events after it were removed or the ledger was rewritten",
            ))
    return sorted(findings, key=lambda f: (f.position, f.kind))


def head(records: Sequence[ChainRecord]) -> tuple[int, str]:
    """The position and hash of the last record (0 and GENESIS for an empty ledger)."""
    if not records:
        return 0, GENESIS
    return records[-1].position, records[-1].hash
