"""The kit's bookkeeping of "did an operation end since then" (rules.closed_since) takes a ledger
position. A count of changes (checks.changes) leaves recorded refusals out, so once a refusal is
recorded it points before the last operations and takes an earlier operation's end for a new
one: the state machine then expected a snapshot that was refused (found by the suite's run)."""

from __future__ import annotations

import pytest
from small_histories import vm_with

from snapledger.adapters.compose import ledger_service
from snapledger.domain.errors import BranchPointRefused, ImageInUse
from snapledger.testing import checks
from snapledger.testing.faults import FaultyPort
from snapledger.testing.rules import closed_since


def test_an_operation_refused_after_a_recorded_refusal_is_not_taken_for_done() -> None:
    storage, ledger = vm_with(snapshots=2)
    ledger.snapshot("vm", "s3")
    ledger.revert("vm", "s2")
    with pytest.raises(BranchPointRefused):
        ledger.delete("vm", "s2")  # refused, and the refusal is recorded
    assert checks.last_type(ledger.app) == "OperationRefused"
    ledger.snapshot("vm", "s4")  # an operation that ends
    app = ledger.app
    position = app.recorder.max_notification_id() or 0
    assert checks.changes(app) < position  # why a count is not a position
    port = FaultyPort(storage)
    held = ledger_service(app, port)  # another process, whose disk someone holds
    port.hold(held.vm("vm").disks["vda"], writing=True)
    with pytest.raises(ImageInUse):
        held.snapshot("vm", "s5")
    assert "s5" not in held.vm("vm").snapshots
    assert not closed_since(app, ledger, position, "vm")
    assert closed_since(app, ledger, checks.changes(app), "vm")  # the count's mistake
