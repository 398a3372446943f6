"""The trail by operation: one entry per thing a person (or a timer) did, like `zpool history`.

An operation is every event recorded under one operation id (the chain record's, set by the
command that recorded them): `snapshot web s2` is its OperationStarted, its steps, the image
registrations it touched and its SnapshotTaken. What it was (kind, target), how it ended and the
bytes it planned to move come from the events' operation facts (trail.operation_facts). A VM
operation that a later `recover` finished or rolled back takes that ending: the first attempt
was a crash, the result is what the disks hold now.

Events recorded before operations had ids are grouped as well as they can be: by the VM
operation they belong to, bookkeeping with the entry before it of the same VM, anything else
on its own (docs/cli.md).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .trail import TrailEntry, done_by

RESULTS = ("done", "failed", "refused", "rolled-back", "open")
KINDS = frozenset({
    "adopt", "snapshot", "revert", "delete", "gc", "prune", "swap-disk", "recover", "reconcile",
    "retire", "move",
})
# Registrations' events: bookkeeping that, without an operation id, goes with the entry before it
_BOOKKEEPING = frozenset({"FirstUsed", "UseAdded", "UseEnded", "ChangeReserved", "ChangeFinished"})


@dataclass
class OperationEntry:
    operation: str  # the id; "position:N" for events recorded before operations had one
    vm: str | None
    kind: str
    target: str | None
    result: str  # one of RESULTS
    started: str  # the times of its first and last events (UTC, ISO 8601)
    finished: str
    actor: str | None
    host: str | None
    reason: str | None
    bytes_moved: int | None
    why: str | None  # a refusal's or a failure's words
    first_position: int
    position: int  # its last event's
    positions: list[int] = field(default_factory=list)
    description: str | None = None
    ended_by: str | None = None  # the operation (a recover) that recorded its ending, if another


    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.operation, "vm": self.vm, "kind": self.kind, "target": self.target,
            "result": self.result, "started": self.started,
            "finished": None if self.result == "open" else self.finished,
            "actor": self.actor, "host": self.host, "reason": self.reason,
            "bytes_moved": self.bytes_moved, "why": self.why, "description": self.description,
            "first_position": self.first_position, "position": self.position,
            "events": len(self.positions), "ended_by": self.ended_by,
        }


def operations(entries: Iterable[TrailEntry]) -> list[OperationEntry]:
    """The operations of `entries` (the whole trail, in ledger order), in the order they began."""
    found: dict[str, OperationEntry] = {}
    of_vm_operation: dict[str, OperationEntry] = {}  # a VM operation's id -> where it started
    last_of_vm: dict[str | None, OperationEntry] = {}
    for entry in entries:
        key = _key(entry, of_vm_operation, last_of_vm)
        op = found.get(key)
        if op is None:
            op = found[key] = _begun(key, entry)
        _add(op, entry, of_vm_operation)
        last_of_vm[entry.vm] = op
    return list(found.values())


def _key(
    entry: TrailEntry,
    of_vm_operation: dict[str, OperationEntry],
    last_of_vm: dict[str | None, OperationEntry],
) -> str:
    by = entry.recorded_by
    if by is not None and by.operation is not None:
        return by.operation
    facts = entry.facts or {}
    if "op" in facts:  # before operation ids: a VM operation's events go together
        started = of_vm_operation.get(facts["op"])
        return started.operation if started is not None else str(facts["op"])
    if entry.type.rpartition(".")[2] in _BOOKKEEPING and entry.vm in last_of_vm:
        return last_of_vm[entry.vm].operation
    return f"position:{entry.position}"


def _begun(key: str, entry: TrailEntry) -> OperationEntry:
    by = entry.recorded_by
    return OperationEntry(
        operation=key, vm=entry.vm, kind=entry.type.rpartition(".")[2], target=None, result="done",
        started=entry.time, finished=entry.time, actor=by.actor if by else None,
        host=by.host if by else None, reason=by.reason if by else None, bytes_moved=None,
        why=None, first_position=entry.position, position=entry.position,
    )


def _add(op: OperationEntry, entry: TrailEntry, of_vm_operation: dict[str, OperationEntry]) -> None:
    op.positions.append(entry.position)
    op.finished, op.position = entry.time, entry.position
    op.vm = op.vm or entry.vm
    facts = entry.facts or {}
    if "kind" in facts and (op.kind not in KINDS or facts.get("result") == "refused"):
        op.kind, op.target = facts["kind"], facts.get("target")
    if "description" in facts:
        op.description = facts["description"]
    if "bytes_moved" in facts:
        op.bytes_moved = facts["bytes_moved"]
        of_vm_operation[facts["op"]] = op
        op.result = "open"
    if "drift" in facts:  # a refusal on drift (its OperationRefused follows, since ids)
        op.result, op.why = "refused", facts["drift"]
    if "resumes" in facts and facts["resumes"] in of_vm_operation:  # recover: of what
        resumed = of_vm_operation[facts["resumes"]]
        op.target = " ".join(str(p) for p in (resumed.kind, resumed.target) if p)
    if "result" in facts:
        started = of_vm_operation.get(facts["op"], op) if "op" in facts else op
        started.result = facts["result"]
        # a failure's words stay only while it is the ending; a recover that finished it
        # supersedes them
        started.why = facts.get("why") if facts["result"] != "done" or started is op else None
        if started is not op:
            started.finished, started.ended_by = entry.time, op.operation


def chosen(
    found: Iterable[OperationEntry],
    vm: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    kinds: Collection[str] = (),
    by: str | None = None,
) -> list[OperationEntry]:
    """The operations on `vm`, begun in [since, until], of one of `kinds`, by `by` (an actor,
    or actor@host)."""
    picked = []
    for op in found:
        if vm is not None and op.vm != vm:
            continue
        if kinds and op.kind not in kinds:
            continue
        if by is not None and not done_by(by, op.actor, op.host):
            continue
        when = datetime.fromisoformat(op.started)
        if (since is not None and when < since) or (until is not None and when > until):
            continue
        picked.append(op)
    return picked
