"""Tests written for mutants of the VM's records (domain/vm_records.py) that survived the fast
unit tests (issue 15, item 4; docs/reliability.md, "Mutation score")."""

from __future__ import annotations

import dataclasses
from uuid import uuid5

import pytest
from small_histories import crashed, vm_with

from snapledger.domain.vm_records import LEDGER_NAMESPACE, vm_id


def test_a_first_vm_of_a_name_keeps_the_id_it_had_before_generations_existed() -> None:
    """Ledgers recorded before `retire` freed names hold their VMs under the name alone."""
    assert vm_id("web") == vm_id("web", 1) == uuid5(LEDGER_NAMESPACE, "vm:web")
    assert vm_id("web", 2) == uuid5(LEDGER_NAMESPACE, "vm:web#2")
    assert vm_id("web", 0) == uuid5(LEDGER_NAMESPACE, "vm:web#0")
    assert len({vm_id("web", g) for g in range(4)}) == 4


def test_snapshot_and_operation_records_are_values() -> None:
    storage, ledger = vm_with(snapshots=1)
    snapshot = ledger.vm("vm").snapshots["s1"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.parent = "s0"  # type: ignore[misc]
    storage, ledger = crashed()
    operation = ledger.vm("vm").operation
    assert operation is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        operation.done = 0  # type: ignore[misc]
