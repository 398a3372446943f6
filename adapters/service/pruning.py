"""`prune VM`: the snapshots restic's keep rules do not hold, deleted one ordinary `delete` at a
time (every safety rule, the cheapest merge each), in the order that moves the fewest bytes
(projections/retention.py decides; this carries it out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from snapledger.domain.steps import OperationKind, Plan
from snapledger.projections import retention
from snapledger.projections.retention import KeepRules, PruneStep

if TYPE_CHECKING:
    from snapledger.adapters.service.commands import Snapledger


@dataclass(frozen=True)
class Pruned:
    kept: dict[str, tuple[str, ...]]  # snapshot -> the rules that keep it
    deleted: tuple[PruneStep, ...]  # in the order done (a dry run: to be done)
    done: bool

    @property
    def bytes_moved(self) -> int:
        return sum(step.plan.bytes_moved for step in self.deleted)

    @property
    def bytes_freed(self) -> int:
        return sum(step.bytes_freed for step in self.deleted)


def prune(ledger: Snapledger, vm_name: str, rules: KeepRules, branches: str, dry_run: bool) -> Pruned:
    """Plan every deletion first (nothing is done if one can't be planned), then run each as an
    ordinary delete, which plans again on the disks as they are then and checks everything a
    delete checks. A snapshot that became the current one meanwhile (another process reverted
    to it) is kept. A failure part way leaves the deletions before it done and recorded."""
    vm, view = ledger.prepare(vm_name, dry_run)
    decision = retention.decide(vm.snapshots.values(), rules, vm.current)
    planned = retention.cheapest_route(
        view, vm_name, decision.remove, branches, ledger.cost, ledger.dependants(vm, view)
    )
    kept = dict(decision.keep) | {name: ("branch point",) for name in planned.branch_points}
    # Every file any of the deletions touches is checked against the disks now, as one
    # delete's plan is: drift or a file another process holds refuses the whole prune before
    # anything is done (a dry run says so too, recording nothing).
    every_step = tuple(s for step in planned.steps for s in step.plan.steps)
    ledger.check_plan(vm, Plan(OperationKind.DELETE, every_step, "prune"), record=not dry_run)
    if dry_run:
        return Pruned(kept, planned.steps, done=False)
    done = []
    for step in planned.steps:
        if ledger.vm(vm_name).current == step.snapshot:  # another process reverted to it meanwhile
            kept[step.snapshot] = ("current",)
            continue
        plan = ledger.delete(vm_name, step.snapshot, branches=branches)
        done.append(PruneStep(step.snapshot, plan, step.bytes_freed))
    return Pruned(kept, tuple(done), done=True)
