"""The audit trail: each recorded event as one readable entry, in ledger order."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from snapledger.domain.image_registry import ImageRegistration
from snapledger.domain.ledger_hash import ChainRecord, RecordedBy
from snapledger.domain.vm import VirtualMachine

from .history import as_utc


@dataclass(frozen=True)
class TrailEntry:
    position: int
    time: str
    vm: str | None
    image: str | None
    type: str
    summary: str
    recorded_by: RecordedBy | None = None  # None only if the chain record is missing
    hash: str | None = None
    # What the event tells of its operation (operation_facts), for `log --operations`
    facts: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        by = self.recorded_by
        return {
            "position": self.position,
            "time": self.time,
            "vm": self.vm,
            "image": self.image,
            "type": self.type,
            "actor": by.actor if by else None,
            "host": by.host if by else None,
            "tool_version": by.tool_version if by else None,
            "reason": by.reason if by else None,
            "operation": by.operation if by else None,
            "summary": self.summary,
            "hash": self.hash,
        }


def _event_types() -> frozenset[str]:
    names = set()
    for aggregate in (VirtualMachine, ImageRegistration):
        for name, value in vars(aggregate).items():
            if isinstance(value, type) and issubclass(value, aggregate.Event) and value is not aggregate.Event:
                names.add(name)
    return frozenset(names - {"Created"})


EVENT_TYPES = _event_types()  # what `log --type` accepts


def _summary(kind: str, data: dict[str, Any]) -> str:
    if kind == "Adopted":
        return "adopted with disks " + ", ".join(f"{d}={p}" for d, p in sorted(data["disks"].items()))
    if kind == "OperationStarted":
        steps = data["plan"]["steps"]
        return (
            f"{data['kind']} {data['target'] or ''} started: {len(steps)} steps, "
            f"{data['plan']['bytes_moved']} bytes; {data['plan']['strategy']}"
        )
    if kind == "StorageStepCompleted":
        return f"step {data['index']} done"
    if kind in ("SnapshotTaken", "Reverted", "SnapshotDeleted"):
        return f"{kind} {data['name']}"
    if kind == "LibvirtBound":
        return f"libvirt domain {data['domain']} at {data['uri']}"
    if kind == "PivotRequested":
        if data.get("vouched"):
            return (f"step {data['index']}: pivot of {data['disk']} onto {data['base']} vouched "
                    "for by the operator (recover --pivoted)")
        return f"step {data['index']}: pivot of {data['disk']} onto {data['base']} asked of libvirt"
    if kind == "DefinitionRecorded":
        if data.get("redefined"):
            return "libvirt domain redefined on the ledger's images (reconcile)"
        return "libvirt domain definition recorded"
    if kind == "SnapshotsImported":
        return "imported snapshots " + ", ".join(s["name"] for s in data["snapshots"])
    if kind == "DiskSwapped":
        return f"{data['disk']}: {data['previous']} -> {data['path']}"
    if kind == "OperationFailed":
        return f"step {data['index']} failed: {data['error']}"
    if kind == "Reconciled":
        parts = [f"{len(data[k])} {k}" for k in ("observed", "found", "gone", "disowned") if data[k]]
        return "reconciled with the disks: " + (", ".join(parts) or "nothing differed")
    if kind == "Retired":
        return "retired: no longer tracked"
    if kind == "OperationResumed":
        runner = data["runner"]
        return f"resumed by process {runner.get('pid')} on {runner.get('host')}"
    if kind == "OperationRolledBack":
        return f"rolled back: {data['reason']}"
    if kind == "OperationRefused":
        what = " ".join(part for part in (data["kind"], data["target"]) if part)
        return f"{what} refused: {data['why']}"
    if kind == "DriftDetected":
        return "; ".join(data["findings"])
    if kind == "ImagesDiscarded":
        count = len(data["paths"])
        return f"discarded {count} image{'' if count == 1 else 's'}"
    if kind in ("FirstUsed", "UseAdded", "UseEnded", "ChangeReserved", "ChangeFinished"):
        return f"{kind} by {data.get('vm')}"
    return kind


def operation_facts(kind: str, data: Mapping[str, Any]) -> dict[str, Any] | None:
    """What an event says about the operation it belongs to (projections/operations.py): the
    command's kind and target, the bytes it planned to move, its result, and the VM operation
    (`op`) it starts or ends. None: bookkeeping that says nothing of its own."""
    if kind == "OperationStarted":
        facts = {"kind": data["kind"], "target": data["target"], "op": data["op_id"],
                 "bytes_moved": data["plan"]["bytes_moved"]}
        if (data.get("details") or {}).get("description"):
            facts["description"] = data["details"]["description"]
        return facts
    if kind in ("SnapshotTaken", "Reverted", "SnapshotDeleted", "ImagesDiscarded"):
        return {"op": data["op_id"], "result": "done"}
    if kind == "OperationFailed":
        return {"op": data["op_id"], "result": "failed", "why": data["error"]}
    if kind == "OperationRolledBack":
        return {"op": data["op_id"], "result": "rolled-back", "why": data["reason"]}
    if kind == "OperationResumed":
        return {"kind": "recover", "resumes": data["op_id"]}
    if kind == "OperationRefused":
        return {"kind": data["kind"], "target": data["target"], "result": "refused", "why": data["why"]}
    if kind == "DriftDetected":
        return {"drift": "; ".join(data["findings"])}
    simple = {"Adopted": "adopt", "SnapshotsImported": "adopt", "Reconciled": "reconcile",
              "Retired": "retire", "HomeMoved": "move", "DiskSwapped": "swap-disk"}
    if kind in simple:
        target = data.get("to") if kind == "HomeMoved" else data.get("disk") if kind == "DiskSwapped" else None
        return {"kind": simple[kind], "target": target}
    return {"op": data["op_id"]} if "op_id" in data else None


def trail(
    events: Iterable[tuple[DomainEventProtocol[UUID], int]],
    chain: Mapping[int, ChainRecord] | None = None,
    names: dict[UUID, tuple[str | None, str | None]] | None = None,
) -> list[TrailEntry]:
    """Entries for `events` (with their positions), with who/where/why from their chain records."""
    chain = chain or {}
    names = {} if names is None else names  # aggregate id -> (vm, image); grows as it reads
    entries = []
    for event, position in events:
        data = dict(vars(event))
        qualname = type(event).__qualname__
        aggregate, _, kind = qualname.rpartition(".")
        if event.originator_id not in names:
            if aggregate == "VirtualMachine":
                names[event.originator_id] = (data.get("name"), None)
            else:
                names[event.originator_id] = (None, data.get("path"))
        vm, image = names[event.originator_id]
        entries.append(
            TrailEntry(
                position,
                trail_time(data["timestamp"]),
                vm or data.get("vm"),
                image,
                qualname,
                _summary(kind, data),
                chain[position].recorded_by if position in chain else None,
                chain[position].hash if position in chain else None,
                operation_facts(kind, data),
            )
        )
    return entries


def done_by(who: str, actor: str | None, host: str | None) -> bool:
    """Whether `who` (`log --by`: an actor, or actor@host) is `actor` acting on `host`."""
    return actor is not None and who in (actor, f"{actor}@{host}")


def trail_time(when: datetime) -> str:
    """UTC, always with microseconds: the text sorts as the times do (the trail index relies on it)."""
    return as_utc(when).isoformat(timespec="microseconds")


def select(
    entries: Iterable[TrailEntry],
    vm: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    types: Collection[str] = (),
) -> list[TrailEntry]:
    """The entries of `vm` (or all), recorded in [since, until], of one of `types` (short names
    like `SnapshotTaken` or full ones like `VirtualMachine.SnapshotTaken`)."""
    chosen = []
    for entry in entries:
        if vm is not None and entry.vm != vm:
            continue
        if types and entry.type not in types and entry.type.rpartition(".")[2] not in types:
            continue
        if since is not None or until is not None:
            when = datetime.fromisoformat(entry.time)  # trail_time: always with its offset
            if (since is not None and when < since) or (until is not None and when > until):
                continue
        chosen.append(entry)
    return chosen
