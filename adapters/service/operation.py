"""One operation, from its recorded intent to its closing event.

An operation is recorded before any disk is touched (OperationStarted, with its plan and the
reservations of the files it changes), then carried out one step at a time, each step recorded
done (StorageStepCompleted) before the next begins, and closed with its kind's final event. A
step that fails before anything destructive happened rolls the operation back; after that it
stays open for `recover`, which carries on from the first step not recorded done (every step is
safe to redo). The service (commands.py) and the benchmark driver (bench/_driver.py) both run
their operations through `Operations`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import NoReturn, Protocol

from snapledger.adapters.service.drift import recorded_format
from snapledger.adapters.service.ports import Clock, Hypervisor, Runners, StoragePort
from snapledger.adapters.service.registrations import Registry, released, reserved
from snapledger.adapters.service.step_execution import carry_out
from snapledger.domain.errors import BadInput, ImageInUse, StorageError, ToolMissing
from snapledger.domain.image_registry import ImageRegistration
from snapledger.domain.images import ImageFacts
from snapledger.domain.steps import (
    DOMAIN_STEPS,
    Commit,
    CreateOverlay,
    DeleteFile,
    Plan,
    Pull,
    SetActive,
    Step,
)
from snapledger.domain.vm import OperationRecord, VirtualMachine


class DriftDuringOperation(StorageError):
    """A file changed identity in the middle of an operation: the step is not done, the
    operation stays open (failed) and `recover` retries once the user has put things right."""

    exit_code = 3


class Records(Protocol):
    """Where an operation's events go: the service's store, or the benchmark's memory."""

    def save(self, *aggregates: object, unrecorded: str = "nothing was done") -> None:
        """Record atomically; `unrecorded` says what the disks hold that the ledger would not."""

    def registry(self, vm: VirtualMachine) -> Registry:
        """Where `vm`'s home host finds and makes image registrations."""


Guard = Callable[[VirtualMachine, Step], None]  # right before a destructive step; raises to stop


class Operations:
    def __init__(
        self,
        records: Records,
        storage: StoragePort,
        clock: Clock,
        runners: Runners,
        hypervisor: Hypervisor | None = None,
        guard: Guard | None = None,
    ) -> None:
        self.records = records
        self.storage = storage
        self.clock = clock
        self.runners = runners
        self.hypervisor = hypervisor  # acts for libvirt VMs; None: they can't be changed
        self.guard = guard

    def hypervisor_of(self, vm: VirtualMachine) -> Hypervisor | None:
        """The hypervisor adapter if `vm` is a libvirt domain and there is one (a replayed ledger
        has none: it reads recorded facts only)."""
        return self.hypervisor if vm.libvirt is not None else None

    def required_hypervisor(self, vm: VirtualMachine) -> Hypervisor:
        if self.hypervisor is None:
            raise BadInput(f"VM {vm.name!r} is a libvirt domain and this ledger has no libvirt adapter")
        return self.hypervisor

    def storage_for(self, vm: VirtualMachine) -> StoragePort:
        """The storage a VM's steps go to: for a libvirt VM, images its running domain has open
        are libvirt's (block jobs), the rest qemu-img's."""
        hypervisor = self.hypervisor_of(vm)
        return hypervisor.storage(vm, self.storage) if hypervisor is not None else self.storage

    # ---- intent ------------------------------------------------------------------------

    def start(
        self, vm: VirtualMachine, op_id: str, plan: Plan, target: str | None, details: dict[str, object]
    ) -> None:
        """Record the intent and the reservations, before any disk is touched."""
        details = {**details, "previous_active": dict(vm.disks), "runner": self.runners.this_process()}
        if (hypervisor := self.hypervisor_of(vm)) is not None:
            # whether the domain runs and in which QEMU, for recover; and the definition it
            # starts from, on the images the ledger says (a recorded one may predate this code)
            details.update(hypervisor.runtime(vm))
            vm.record_definition(hypervisor.current_definition(vm), self.clock())
        vm.start_operation(op_id, plan.kind, target, plan, [], details, self.clock())
        self.records.save(vm, *reserved(self.records.registry(vm), vm.name, op_id, plan.steps))

    # ---- carrying out ----------------------------------------------------------------

    def execute(self, vm: VirtualMachine, recovering: bool = False) -> None:
        """Carry out `vm`'s open operation step by step, recording each. `vm` is loaded once:
        while its operation is open no other command records on it (a second `recover` racing
        this one fails its save), so the object stays current. A ConcurrentUpdate (another
        process took the operation over) goes to the caller."""
        assert vm.operation is not None
        hypervisor = self.hypervisor_of(vm)
        if hypervisor is not None:
            hypervisor.on_pivot = functools.partial(self._record_pivot, vm)
        try:
            with self.runners.carrying_out(vm.operation.op_id):
                self._execute_steps(vm, recovering)
        finally:
            if hypervisor is not None:
                hypervisor.on_pivot = None

    def _execute_steps(self, vm: VirtualMachine, recovering: bool) -> None:
        # The first step recover carries out may have been cut short mid-way (by a crash or a
        # failure): it is redone knowing that; every later one starts fresh.
        resumed = recovering
        while True:
            op = vm.operation
            if op is None:
                return
            if op.done == len(op.steps):
                self.finish(vm, op)
                return
            index = op.done
            step = op.steps[index]
            try:
                if recovering and (hypervisor := self.hypervisor_of(vm)) is not None:
                    hypervisor.storage(vm, self.storage).await_job(step)
                if step.destructive and self.guard is not None:
                    self.guard(vm, step)
                observed = self._carry_out(step, vm, resumed)
            except (ImageInUse, ToolMissing) as busy:
                self._on_busy(vm, op, index, busy, recovering)
            except StorageError as error:
                self._on_failure(vm, op, index, error)
                raise
            resumed = False
            vm.complete_step(op.op_id, index, observed)
            if isinstance(step, SetActive) and (hypervisor := self.hypervisor_of(vm)) is not None:
                # mid-operation too, the definition `show --json` gives names the disks' images
                vm.record_definition(hypervisor.current_definition(vm), self.clock())
            self.records.save(vm, unrecorded=(
                f"step {index + 1} of the {op.kind} operation {op.op_id} is done on disk but not "
                "recorded: once the ledger can be written (free space on its filesystem), run "
                "'snapledger recover', which does it again"
            ))

    def _carry_out(self, step: Step, vm: VirtualMachine, resumed: bool) -> list[ImageFacts]:
        def format_of(path: str) -> str:
            return recorded_format(vm, path) or "qcow2"  # an overlay the operation creates

        # what a pulled image was backed by before the step (the ledger's facts change only
        # once the step is recorded done)
        before = vm.images.get(step.image) if isinstance(step, Pull) else None
        was = (before.facts.backing, before.facts.backing_format) if before else None
        storage: StoragePort = self.storage
        if vm.libvirt is not None:
            hypervisor = self.required_hypervisor(vm)
            if isinstance(step, DOMAIN_STEPS):
                hypervisor.carry_out(vm, step)
                return []
            storage = hypervisor.storage(vm, self.storage)
            if isinstance(step, DeleteFile) and step.path in vouched_tops(vm.operation):
                # a pivot only the operator vouched for (recover --pivoted): if it did not
                # happen, the top holds the guest's last writes, so it is kept (now the user's)
                return []
        if isinstance(step, SetActive):
            # The image the disk leaves (a snapshot's frozen image, a revert's abandoned
            # present) was written until now (a live snapshot switches the domain in the step
            # before): its facts as of this moment are the ones it keeps from here on, times
            # included, so what drift compares is its content after its last legitimate write.
            left = vm.disks[step.disk]
            record = vm.images.get(left)
            if left == step.path or record is None or not storage.exists(left):
                return []
            try:
                return [storage.inspect(left, record.facts.format)]
            except StorageError:  # not readable now: the checks that need it say so
                return []
        return carry_out(storage, step, format_of, resumed, was)

    def _record_pivot(self, vm: VirtualMachine, disk: str, base: str) -> None:
        """Recorded before the pivot is asked: without it, recover takes a domain found on
        `base` for one started there by hand (see LibvirtStorage._committed_live_before)."""
        op = vm.operation
        assert op is not None
        if op.pivot_requested(op.done, disk) == base and not op.pivot_vouched(op.done):
            return  # asked before (a "not ready" answer, then again)
        vm.record_pivot(op.op_id, op.done, disk, base, self.clock())
        self.records.save(vm, unrecorded=(
            f"nothing was pivoted: the {op.kind} operation {op.op_id} stays open; run "
            "'snapledger recover' once the ledger can be written"
        ))

    # ---- failure, undo, close -----------------------------------------------------------

    def _on_failure(
        self, vm: VirtualMachine, op: OperationRecord, index: int, error: StorageError
    ) -> None:
        step = op.steps[index]
        if op.started_destruction or step.destructive:
            vm.fail_operation(op.op_id, index, str(error))
            self.records.save(vm, unrecorded=(
                f"step {index + 1} of the {op.kind} operation {op.op_id} failed ({error}) and "
                "that is not recorded either: run 'snapledger recover' once it can be written"
            ))
            return
        self.roll_back(vm, op, index, error)

    def _on_busy(
        self, vm: VirtualMachine, op: OperationRecord, index: int,
        busy: ImageInUse | ToolMissing, recovering: bool,
    ) -> NoReturn:
        """The step could not start (another process holds an image it opens, or qemu-img can't
        be run), so nothing was done. Nothing is recorded as failed: a fresh operation that has
        destroyed nothing yet is rolled back; otherwise it stays open for `recover`, to be retried
        once that process has finished (or qemu-img is back)."""
        error = type(busy)
        when = "that process has finished" if isinstance(busy, ImageInUse) else "qemu-img is installed"
        if recovering or op.started_destruction:
            raise error(
                f"{busy}; the {op.kind} operation {op.op_id} stays open: run 'snapledger "
                f"recover' once {when}"
            ) from None
        self.roll_back(vm, op, index, busy)
        raise error(f"{busy}; nothing was done: try again once {when}") from None

    def roll_back(
        self, vm: VirtualMachine, op: OperationRecord, index: int,
        error: StorageError | ToolMissing,
    ) -> None:
        """Undo an operation that destroyed nothing: the overlays it made before step `index`
        are removed and its reservations released."""
        created = [s.path for s in op.steps[:index] if isinstance(s, CreateOverlay)]
        for path in reversed(created):
            if self.storage.exists(path):
                self.storage.delete(path)
        vm.roll_back_operation(op.op_id, created, str(error))
        planned = [s.path for s in op.steps if isinstance(s, CreateOverlay)]  # failed one too
        self.records.save(vm, *self._release(vm, op, {p: True for p in planned}), unrecorded=(
            f"the {op.kind} operation {op.op_id} was undone on disk ({error}) but that is not "
            "recorded: run 'snapledger recover' once the ledger can be written"
        ))

    def finish(self, vm: VirtualMachine, op: OperationRecord) -> None:
        gone = vm.paths_let_go(op.op_id)
        vm.close_operation(op.op_id, self.clock())
        if (hypervisor := self.hypervisor_of(vm)) is not None:  # the definition on the final images
            vm.record_definition(hypervisor.current_definition(vm), self.clock())
        self.records.save(vm, *self._release(vm, op, gone), unrecorded=(
            f"every step of the {op.kind} operation {op.op_id} is done and recorded, its end is "
            "not: run 'snapledger recover' once the ledger can be written"
        ))

    def _release(
        self, vm: VirtualMachine, op: OperationRecord, gone: Mapping[str, bool]
    ) -> list[ImageRegistration]:
        return released(self.records.registry(vm), vm.name, op, gone)


def vouched_tops(op: OperationRecord | None) -> set[str]:
    """The tops of the operation's active commits whose pivot only the operator vouched for."""
    if op is None:
        return set()
    return {
        step.top for index, step in enumerate(op.steps)
        if isinstance(step, Commit) and op.pivot_vouched(index)
    }
