"""Time travel: what changed for one VM between two points of the ledger.

Pure: two LedgerViews (the ledger's state right after two positions, see
`Snapledger.view_at`) and, optionally, the events recorded between them go in; plain data, ready
for JSON, comes out. The keys are documented in docs/time-travel.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from snapledger.domain.errors import BadInput
from snapledger.domain.vm import OperationRecord, VirtualMachine, vm_id

from .dag import ImageDag
from .documents import snapshot_json
from .view import LedgerView

# The VM events that close an operation, and how it ended.
CLOSING_EVENTS = {
    "SnapshotTaken": "done",
    "Reverted": "done",
    "SnapshotDeleted": "done",
    "ImagesDiscarded": "done",
    "OperationRolledBack": "rolled back",
}


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (`2026-11-25T21:00:00Z`, with an offset, or naive, which is UTC)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(
            f"bad time {text!r}: use ISO 8601, e.g. 2026-11-25T21:00:00Z or 2026-11-25T22:00:00+01:00"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)  # keeps its offset


_AGO = re.compile(r"(?P<span>(?:\d+[smhdwy])+)(?: ago)?")


def parse_when(text: str, now: datetime) -> datetime:
    """A time as people write it in `log --since`: ISO 8601 (parse_time), `now`, `today`,
    `yesterday` (midnight in `now`'s zone: local time) or a span back from now (`2h`, `90m`,
    `7d`, `1w2d`, `2h ago`)."""
    word = text.strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if word == "now":
        return now
    if word == "today":
        return midnight
    if word == "yesterday":
        return midnight - timedelta(days=1)
    span = _AGO.fullmatch(word)
    if span is not None:
        from .retention import parse_duration

        try:
            return now - parse_duration(span.group("span"))
        except OverflowError:
            raise BadInput(f"bad time {text!r}: that is before the year 1") from None
    try:
        return parse_time(text)
    except BadInput:
        raise BadInput(
            f"bad time {text!r}: use ISO 8601 (2026-11-25T21:00:00Z), today, yesterday, now, "
            "or a span back from now such as 2h, 90m or 7d"
        ) from None


def as_utc(when: datetime) -> datetime:
    """`when` in UTC; a naive time is taken to be UTC already."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def event_time(event: DomainEventProtocol[UUID]) -> datetime:
    """The time eventsourcing stamped on `event` (what `log` shows), made timezone-aware."""
    stamp: datetime = event.timestamp  # type: ignore[attr-defined]
    return as_utc(stamp)


def _operation(op: OperationRecord) -> dict[str, Any]:
    return {"id": op.op_id, "kind": op.kind, "target": op.target, "position": None, "time": None}


def _chains(dag: ImageDag, vm: VirtualMachine | None) -> dict[str, tuple[str, list[str]]]:
    if vm is None:
        return {}
    return {disk: (active, dag.chain(active)) for disk, active in vm.disks.items()}


def _owners(dag: ImageDag, paths: Iterable[str]) -> dict[str, str]:
    return {path: dag.nodes[path].owner.value for path in paths}


def diff(
    before: LedgerView,
    after: LedgerView,
    vm: str,
    events: Iterable[tuple[DomainEventProtocol[UUID], int]] = (),
) -> dict[str, Any]:
    """What changed for `vm` from the state `before` to the state `after`.

    A VM missing from a view counts as a VM with nothing (no disks, snapshots or images).
    `events` are the events recorded after `before` up to `after` (any others are ignored); they
    name the operations that started and finished in between. Without them, only operations
    open at either end are seen.
    """
    old, new = before.vms.get(vm), after.vms.get(vm)
    old_snaps = old.snapshots if old is not None else {}
    new_snaps = new.snapshots if new is not None else {}
    old_current = old.current if old is not None else None
    new_current = new.current if new is not None else None

    snapshots: dict[str, list[dict[str, Any]]] = {
        "added": [snapshot_json(new_snaps[n]) for n in sorted(set(new_snaps) - set(old_snaps))],
        "removed": [snapshot_json(old_snaps[n]) for n in sorted(set(old_snaps) - set(new_snaps))],
        "changed": [
            {
                "name": n,
                "parent": {"from": old_snaps[n].parent, "to": new_snaps[n].parent},
                "disks": {"from": dict(old_snaps[n].disks), "to": dict(new_snaps[n].disks)},
            }
            for n in sorted(set(old_snaps) & set(new_snaps))
            if (old_snaps[n].parent, old_snaps[n].disks) != (new_snaps[n].parent, new_snaps[n].disks)
        ],
    }

    known = new if new is not None else old
    home = known.home if known is not None else None
    dag_before, dag_after = ImageDag(before, home=home), ImageDag(after, home=home)
    old_disks, new_disks = _chains(dag_before, old), _chains(dag_after, new)
    disks = {
        disk: {
            "active": {
                "from": old_disks[disk][0] if disk in old_disks else None,
                "to": new_disks[disk][0] if disk in new_disks else None,
            },
            "chain": {
                "from": old_disks[disk][1] if disk in old_disks else [],
                "to": new_disks[disk][1] if disk in new_disks else [],
            },
        }
        for disk in sorted(set(old_disks) | set(new_disks))
        if old_disks.get(disk) != new_disks.get(disk)
    }

    old_images = old.images if old is not None else {}
    new_images = new.images if new is not None else {}
    added = sorted(set(new_images) - set(old_images))
    removed = sorted(set(old_images) - set(new_images))
    owner_after = _owners(dag_after, added)
    owner_before = _owners(dag_before, removed)
    images = {
        "added": [{"path": p, "owner": owner_after[p]} for p in added],
        "removed": [{"path": p, "owner": owner_before[p]} for p in removed],
        "rebacked": [
            {
                "path": p,
                "from": old_images[p].facts.backing,
                "to": new_images[p].facts.backing,
            }
            for p in sorted(set(old_images) & set(new_images))
            if old_images[p].facts.backing != new_images[p].facts.backing
        ],
    }

    operations = _operations(before, after, vm, old, new, events)
    domain_xml_changed = (old.domain_xml if old else None) != (new.domain_xml if new else None)
    current = None if old_current == new_current else {"from": old_current, "to": new_current}
    changed = bool(
        current is not None
        or domain_xml_changed
        or disks
        or any(snapshots.values())
        or any(images.values())
        or any(operations.values())
    )
    return {
        "vm": vm,
        "from": before.position,
        "to": after.position,
        "changed": changed,
        "current": current,
        "domain_xml_changed": domain_xml_changed,
        "snapshots": snapshots,
        "disks": disks,
        "images": images,
        "operations": operations,
    }


def _operations(
    before: LedgerView,
    after: LedgerView,
    vm: str,
    old: VirtualMachine | None,
    new: VirtualMachine | None,
    events: Iterable[tuple[DomainEventProtocol[UUID], int]],
) -> dict[str, list[dict[str, Any]]]:
    """Operations of `vm` started, finished (done or rolled back) and failed in between."""
    # the stream of the VM by that name at the end (a name adopted again is another stream)
    wanted = new.id if new is not None else old.id if old is not None else vm_id(vm)
    started: dict[str, dict[str, Any]] = {}
    finished: dict[str, dict[str, Any]] = {}
    failed: list[dict[str, Any]] = []
    known: dict[str, tuple[str, str | None]] = {}  # op id -> (kind, target)
    for op in (old.operation if old else None, new.operation if new else None):
        if op is not None:
            known[op.op_id] = (op.kind, op.target)
    for event, position in events:
        if event.originator_id != wanted or not before.position < position <= after.position:
            continue
        kind = type(event).__qualname__.rpartition(".")[2]
        data = vars(event)
        when = event_time(event).isoformat()
        if kind == "OperationStarted":
            known[data["op_id"]] = (data["kind"], data["target"])
            started[data["op_id"]] = {
                "id": data["op_id"], "kind": data["kind"], "target": data["target"],
                "position": position, "time": when,
            }
        elif kind in CLOSING_EVENTS:
            op_kind, target = known.get(data["op_id"], (None, data.get("name")))
            finished[data["op_id"]] = {
                "id": data["op_id"], "kind": op_kind, "target": target,
                "outcome": CLOSING_EVENTS[kind], "position": position, "time": when,
            }
        elif kind == "OperationFailed":
            op_kind, target = known.get(data["op_id"], (None, None))
            failed.append({
                "id": data["op_id"], "kind": op_kind, "target": target, "step": data["index"],
                "error": data["error"], "position": position, "time": when,
            })
    # Seen from the two states alone: an operation open at the end that was not open at the
    # start has started; one open at the start and not at the end has finished.
    old_op = old.operation if old is not None else None
    new_op = new.operation if new is not None else None
    if new_op is not None and (old_op is None or old_op.op_id != new_op.op_id):
        started.setdefault(new_op.op_id, _operation(new_op))
    if old_op is not None and (new_op is None or new_op.op_id != old_op.op_id):
        finished.setdefault(old_op.op_id, {**_operation(old_op), "outcome": None})
    return {
        "started": list(started.values()),
        "finished": list(finished.values()),
        "failed": failed,
    }


__all__ = ["CLOSING_EVENTS", "diff", "event_time", "parse_time"]
