"""The audit trail: each recorded event as one readable entry, in ledger order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol


@dataclass(frozen=True)
class TrailEntry:
    position: int
    time: str
    vm: str | None
    image: str | None
    type: str
    summary: str

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "time": self.time,
            "vm": self.vm,
            "image": self.image,
            "type": self.type,
            "actor": None,  # recorded from issue 4 on
            "host": None,
            "summary": self.summary,
        }


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
    if kind == "DiskSwapped":
        return f"{data['disk']}: {data['previous']} -> {data['path']}"
    if kind == "OperationFailed":
        return f"step {data['index']} failed: {data['error']}"
    if kind == "OperationRolledBack":
        return f"rolled back: {data['reason']}"
    if kind == "DriftDetected":
        return "; ".join(data["findings"])
    if kind == "ImagesDiscarded":
        return f"discarded {len(data['paths'])} images"
    if kind in ("FirstUsed", "UseAdded", "UseEnded", "ChangeReserved", "ChangeFinished"):
        return f"{kind} by {data.get('vm')}"
    return kind


def trail(events: Iterable[tuple[DomainEventProtocol[UUID], int]]) -> list[TrailEntry]:
    """Entries for `events` (with their positions), read from the events alone."""
    names: dict[UUID, tuple[str | None, str | None]] = {}  # aggregate id -> (vm, image)
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
                data["timestamp"].isoformat(),  # every stored event has one
                vm or data.get("vm"),
                image,
                qualname,
                _summary(kind, data),
            )
        )
    return entries
