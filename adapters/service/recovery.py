"""`recover`: finish, or undo, what a crash or a failure left open.

Every step is safe to redo (step_execution.py), so an open operation whose process is gone is
carried on from its first step not recorded done; one that destroyed nothing and lost an
overlay it made is rolled back instead. An operation another process still carries out is left
alone, and so is one started on another host (only that host can tell whether it still runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapledger.adapters.service.operation import vouched_tops
from snapledger.adapters.service.ports import Runners
from snapledger.domain.errors import (
    BadInput,
    ConcurrentUpdate,
    ImageInUse,
    OperationInProgress,
    StorageError,
)
from snapledger.domain.steps import Commit, CreateOverlay, Plan
from snapledger.domain.vm import OperationRecord

if TYPE_CHECKING:
    from snapledger.adapters.service.commands import Snapledger


def recover(ledger: Snapledger, vm_name: str | None = None, pivoted: bool = False) -> list[str]:
    """Finish every operation left open. `pivoted`: the operator vouches that the live active
    commit `vm_name`'s operation was at pivoted onto its base (by hand) and the domain ran
    there since (recorded first)."""
    if pivoted:
        assert vm_name is not None
        _vouch_pivot(ledger, vm_name)
    names = [vm_name] if vm_name is not None else ledger.home_vms()
    finished: list[str] = []
    left_alone: list[str] = []
    operations = ledger.operations
    handled = 0
    for name in names:
        vm = ledger.own(name)
        op = vm.operation
        if op is None:
            continue
        if handled:
            ledger.next_operation()  # each VM's recovery is an operation of its own
        handled += 1
        busy = still_running(ledger.runners, op, vm.taken_over_from)
        if busy is not None:
            left_alone.append(f"{name}: {busy}")
            continue
        created = [s.path for s in op.steps[: op.done] if isinstance(s, CreateOverlay)]
        if not op.started_destruction and any(not ledger.storage.exists(p) for p in created):
            # a roll back cut short (a crash, or the ledger full while it was recorded):
            # nothing destructive happened, so finish undoing it rather than go on
            operations.roll_back(vm, op, op.done, StorageError("an overlay it made is gone"))
            finished.append(f"{name}: rolled back {op.kind} {op.op_id}")
            continue
        try:  # nothing is recorded while another process holds what is left to do
            ledger.checks(vm).refuse_in_use(vm, Plan(op.kind, op.steps[op.done :]))
        except ImageInUse as held:
            raise ImageInUse(
                f"{held}; the {op.kind} operation {op.op_id} stays open: run 'snapledger "
                "recover' once that process has finished"
            ) from None
        if (hypervisor := operations.hypervisor_of(vm)) is not None:
            hypervisor.check_resumable(vm, op)  # a domain started on the wrong image: exit 3
        vm.resume_operation(op.op_id, ledger.runners.this_process(), ledger.clock())
        ledger.save(vm)  # a second recover racing this one fails here, before any step
        ledger.execute(vm, recovering=True)
        notes: list[str] = []
        if (hypervisor := operations.hypervisor_of(vm)) is not None:  # as after a run
            notes = hypervisor.after(vm, Plan(op.kind, op.steps), op.target)
            notes += hypervisor.after_recover(vm, op)
        notes += [
            f"{top} was kept on disk, not deleted: the pivot onto its base is only vouched "
            "for (--pivoted); if it did not happen, the guest's last writes are in it. It is "
            "yours now (the ledger no longer tracks it): compare it with the disk, then "
            "delete it"
            for top in sorted(vouched_tops(op))
            if ledger.storage.exists(top)  # not when our own pivot superseded the word
        ]
        finished.append("; ".join([f"{name}: finished {op.kind} {op.op_id}", *notes]))
    if left_alone:
        raise OperationInProgress("; ".join([*finished, *left_alone]))
    return finished


def _vouch_pivot(ledger: Snapledger, vm_name: str) -> None:
    """Record, on the operator's word, the pivot of the active commit in progress."""
    vm = ledger.own(vm_name)
    op = vm.operation
    step = op.steps[op.done] if op is not None and op.done < len(op.steps) else None
    disk = next(
        (d for d, p in sorted(vm.disks.items()) if isinstance(step, Commit) and p == step.top),
        None,
    )
    if op is None or not isinstance(step, Commit) or disk is None:
        raise BadInput(
            f"--pivoted: VM {vm_name!r} has no open operation whose next step is a live "
            "commit of a disk's active image"
        )
    if (busy := still_running(ledger.runners, op, vm.taken_over_from)) is not None:
        raise OperationInProgress(f"VM {vm_name!r}: {busy}")
    if not op.pivot_vouched(op.done):
        vm.record_pivot(op.op_id, op.done, disk, step.base, ledger.clock(), vouched=True)
        ledger.save(vm)


def still_running(runners: Runners, op: OperationRecord, dead: tuple[str, ...] = ()) -> str | None:
    """Why `op` is left alone (its process still carries it out, or another host's does),
    or None if its runner is gone and it may be finished here. `dead`: hosts the VM was taken
    over from (the operator vouched they are dead): what they started runs no more."""
    runner = op.runner
    if runner is not None and runner.get("host") in dead:
        return None
    running = runners.running(runner, op.op_id)
    if running is False:
        return None
    assert runner is not None
    if running is None:
        return (
            f"the {op.kind} operation {op.op_id} was started on host {runner.get('host')}; "
            "only that host can tell whether it still runs: run 'snapledger recover' there"
        )
    return (
        f"the {op.kind} operation {op.op_id} is still being carried out by process "
        f"{runner.get('pid')} on this host: left alone (wait for it to finish)"
    )


def after_conflict(ledger: Snapledger, vm_name: str, op_id: str) -> None:
    """Another process recorded on the VM while this one carried out operation `op_id` (a
    `recover` that took it over): never "nothing was done" for what may be done. Returns if
    the operation is closed (finished elsewhere); raises ConcurrentUpdate saying who carries
    it on otherwise."""
    latest = ledger.vm(vm_name)
    op = latest.operation
    if op is None or op.op_id != op_id:
        last = next(  # the newest event of that operation, read from the end
            (e for e in ledger.app.newest_first(latest.id) if getattr(e, "op_id", None) == op_id),
            None,
        )
        if type(last).__name__ == "OperationRolledBack":
            raise ConcurrentUpdate(
                f"another process rolled back the operation {op_id} this one carried out: "
                "nothing of it stays done; try again"
            ) from None
        return  # finished (by whoever took it over): the command's work is done
    if ledger.host and latest.home and not latest.lives_on(ledger.host):  # move --take-over
        raise ConcurrentUpdate(
            f"host {latest.home} took VM {vm_name} over while this process carried out its "
            f"{op.kind} operation {op_id}; `recover` there finishes it"
        ) from None
    runner = op.runner or {}
    raise ConcurrentUpdate(
        f"another process (pid {runner.get('pid')} on {runner.get('host')}) took over the "
        f"{op.kind} operation {op_id} and carries it on ({op.done} of {len(op.steps)} steps "
        f"recorded done); see 'snapledger show {vm_name}'"
    ) from None
