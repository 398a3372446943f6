"""Every command plans on a view read back from the stored events, in which one name is many
string objects (each event is decoded on its own: a snapshot's disk names are not the objects
of the VM's disk names). Every plan, refusal and DAG answer must be what it is on the same view
with each name one object (every string interned), asked with names that are other objects
again: the planners and the DAG compare names by value, never by identity."""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

import pytest
from projection_helpers import rebuilt
from small_histories import SCENARIOS

from snapledger.adapters.storage.simulated import SimulatedStorage
from snapledger.domain.errors import SnapledgerError
from snapledger.projections.dag import ImageDag
from snapledger.projections.planners import (
    BRANCH_OPTIONS,
    STRATEGIES,
    plan_delete,
    plan_revert,
    plan_swap,
)
from snapledger.projections.view import LedgerView


def interned(value: Any) -> Any:
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):
        return {interned(k): interned(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(interned(v) for v in value)
    return value


def view_with_one_object_per_name(app: Any) -> LedgerView:
    view = LedgerView()
    for event, position in app.events_after(0):
        for field, value in vars(event).items():
            object.__setattr__(event, field, interned(value))
        view.apply(event, position)
    return view


def _answer(call: Any) -> object:
    try:
        return call()
    except SnapledgerError as refused:
        return (type(refused).__name__, str(refused))


def every_answer(view: LedgerView, storage: SimulatedStorage, names: dict[str, list[str]]) -> dict[str, object]:
    """What the planners and the DAG say about every VM and snapshot in `names`, asked with
    the name objects given (not the view's own)."""
    answers: dict[str, object] = {}
    dag = ImageDag(view)
    for path in sorted(dag.nodes):
        node = dag.nodes[path]
        answers[f"node {path}"] = (
            [n.describe() for n in node.needs], node.owner, node.may_delete, dag.needed_children(path)
        )
    for vm, snapshots in names.items():
        for path in sorted(dag.nodes):
            for snapshot in [None, *snapshots]:
                answers[f"may_write {path} {vm} {snapshot}"] = dag.may_write(
                    path, vm, ignoring_snapshot=snapshot
                )
        actives = sorted({p for other in view.live_vms().values() for p in other.disks.values()})
        for disk in sorted(view.vms[vm].disks):
            for below in actives:  # an overlay over its own replaced image, or over another's
                answers[f"swap {vm} {disk} over {below}"] = _answer(
                    partial(plan_swap, view, vm, disk, ["/new/over.qcow2", below])
                )
        for snapshot in snapshots:
            answers[f"revert {vm} {snapshot}"] = _answer(
                partial(plan_revert, view, vm, snapshot, storage.exists)
            )
            for strategy in STRATEGIES:
                for branches in BRANCH_OPTIONS:
                    answers[f"delete {vm} {snapshot} {strategy} {branches}"] = _answer(
                        partial(plan_delete, view, vm, snapshot, strategy, branches)
                    )
    return answers


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_plans_are_the_same_on_the_view_read_back_from_the_stored_events(scenario: str) -> None:
    storage, ledger = SCENARIOS[scenario]()
    one_object = view_with_one_object_per_name(ledger.app)
    names = {name: list(vm.snapshots) for name, vm in one_object.live_vms().items()}
    expected = every_answer(one_object, storage, names)
    read_back = rebuilt(ledger.app)
    assert any(  # the decoded view has several objects for one name
        next(iter(snapshot.disks)) is not next(iter(vm.disks))
        for vm in read_back.live_vms().values()
        for snapshot in vm.snapshots.values()
    )
    fresh = {"".join(vm): ["".join(s) for s in snapshots] for vm, snapshots in names.items()}
    assert every_answer(read_back, storage, fresh) == expected
    assert any(isinstance(a, tuple) for a in expected.values())  # refusals compared too
