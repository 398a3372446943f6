"""The trail by operation (projections/operations.py) and the times `log --since` reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from snapledger.domain.errors import BadInput
from snapledger.domain.ledger_hash import RecordedBy
from snapledger.projections.history import parse_when
from snapledger.projections.operations import chosen, operations
from snapledger.projections.trail import TrailEntry

T0 = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def entry(position: int, kind: str, facts: dict[str, Any] | None, op: str | None, actor: str = "ann") -> TrailEntry:
    by = RecordedBy(actor, "hv1", "0.1", None, op)
    when = (T0 + timedelta(minutes=position)).isoformat(timespec="microseconds")
    return TrailEntry(position, when, "web", None, f"VirtualMachine.{kind}", kind, by, None, facts)


def started(position: int, op: str | None, kind: str, target: str, vm_op: str) -> TrailEntry:
    facts = {"kind": kind, "target": target, "op": vm_op, "bytes_moved": 4096}
    return entry(position, "OperationStarted", facts, op)


def test_events_of_one_operation_are_one_entry_with_its_ending() -> None:
    found = operations([
        entry(1, "Adopted", {"kind": "adopt", "target": None}, "A"),
        entry(2, "FirstUsed", {"op": "x"}, "A"),
        started(3, "B", "delete", "s1", "B"),
        entry(4, "StorageStepCompleted", {"op": "B"}, "B"),
        entry(5, "SnapshotDeleted", {"op": "B", "result": "done"}, "B"),
        started(6, "C", "delete", "s2", "C"),
        entry(7, "OperationFailed", {"op": "C", "result": "failed", "why": "disk full"}, "C"),
        entry(8, "OperationRefused", {"kind": "revert", "target": "s9", "result": "refused", "why": "no"}, "D", "bob"),
    ])
    assert [(o.operation, o.kind, o.target, o.result, len(o.positions)) for o in found] == [
        ("A", "adopt", None, "done", 2), ("B", "delete", "s1", "done", 3),
        ("C", "delete", "s2", "failed", 2), ("D", "revert", "s9", "refused", 1),
    ]
    assert found[1].bytes_moved == 4096 and found[1].position == 5 and found[2].why == "disk full"
    assert [o.operation for o in chosen(found, by="bob")] == ["D"]
    assert [o.operation for o in chosen(found, by="ann@hv1", kinds={"delete"})] == ["B", "C"]
    assert [o.operation for o in chosen(found, since=T0 + timedelta(minutes=6))] == ["C", "D"]


def test_an_operation_a_recover_finished_reads_done_and_an_open_one_open() -> None:
    found = operations([
        started(1, "B", "delete", "s1", "B"),
        entry(2, "StorageStepCompleted", {"op": "B"}, "B"),
        entry(3, "OperationFailed", {"op": "B", "result": "failed", "why": "killed"}, "B"),
        started(4, "C", "snapshot", "s2", "C"),  # another VM's, never finished
        entry(5, "OperationResumed", {"kind": "recover", "resumes": "B"}, "R"),
        entry(6, "SnapshotDeleted", {"op": "B", "result": "done"}, "R"),
    ])
    assert [(o.operation, o.kind, o.target, o.result) for o in found] == [
        ("B", "delete", "s1", "done"), ("C", "snapshot", "s2", "open"), ("R", "recover", "delete s1", "done"),
    ]
    deleted = found[0].to_json()
    assert deleted["why"] is None and deleted["ended_by"] == "R" and deleted["position"] == 3
    assert deleted["finished"] == found[2].finished  # when the recover ended it
    assert found[1].to_json()["finished"] is None


def test_events_recorded_before_operation_ids_are_grouped_by_their_vm_operation() -> None:
    found = operations([
        entry(1, "Adopted", {"kind": "adopt", "target": None}, None),
        entry(2, "FirstUsed", None, None),  # bookkeeping: with the entry before it
        started(3, None, "snapshot", "s1", "v1"),
        entry(4, "ChangeReserved", {"op": "v1"}, None),
        entry(5, "StorageStepCompleted", {"op": "v1"}, None),
        entry(6, "SnapshotTaken", {"op": "v1", "result": "done"}, None),
        entry(7, "DriftDetected", {"drift": "changed"}, None),
    ])
    assert [(o.kind, o.result, o.positions) for o in found] == [
        ("adopt", "done", [1, 2]), ("snapshot", "done", [3, 4, 5, 6]), ("DriftDetected", "refused", [7]),
    ]


def test_times_people_write() -> None:
    now = datetime(2026, 12, 7, 15, 30, tzinfo=timezone(timedelta(hours=1)))
    assert parse_when("2h", now) == now - timedelta(hours=2)
    assert parse_when("1w2d ago", now) == now - timedelta(days=9)
    assert parse_when("today", now) == datetime(2026, 12, 7, tzinfo=now.tzinfo)
    assert parse_when("yesterday", now) == datetime(2026, 12, 6, tzinfo=now.tzinfo)
    assert parse_when("now", now) == now
    assert parse_when("2026-12-01T00:00:00Z", now) == datetime(2026, 12, 1, tzinfo=UTC)
    for bad in ("soon", "2 hours", "-2h", ""):
        with pytest.raises(BadInput):
            parse_when(bad, now)
