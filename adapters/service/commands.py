"""The service layer: load, decide, record intent, carry out, record the result.

`Snapledger` composes the ledger (a LedgerStore and its ViewProjection), a storage adapter, a
clock, the runners of this host and, for VMs adopted from libvirt, a hypervisor: every one a
port (ports.py), plugged in by compose.py. Each command loads the aggregates it needs, asks a
planner for a plan, and hands it to `Operations` (operation.py), which records the plan before
any disk is touched, runs its steps one by one recording each, and closes the operation.
"""

from __future__ import annotations

import dataclasses
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping

from snapledger.adapters.service import (
    hosts,
    images,
    preconditions,
    pruning,
    queries,
    recording,
    recovery,
    space,
)
from snapledger.adapters.service.drift import DiskChecks
from snapledger.adapters.service.operation import DriftDuringOperation, Operations
from snapledger.adapters.service.ports import (
    Clock,
    Hypervisor,
    LedgerStore,
    Runners,
    StoragePort,
    ViewProjection,
)
from snapledger.adapters.service.pruning import Pruned
from snapledger.adapters.service.reading import LedgerReading
from snapledger.adapters.service.reconcile import Reconciliation, reconcile
from snapledger.adapters.service.registrations import Registry
from snapledger.domain.errors import (
    BadInput,
    ConcurrentUpdate,
    DomainGone,
    DriftFound,
    ImageInUse,
    LedgerUnwritable,
    LiveStepImpossible,
    OperationInProgress,
)
from snapledger.domain.images import ImageFacts
from snapledger.domain.steps import BranchOption, OperationKind, Plan, SetActive, Step, Strategy
from snapledger.domain.vm import VirtualMachine
from snapledger.projections import planners
from snapledger.projections.cost import CostModel
from snapledger.projections.retention import KeepRules
from snapledger.projections.scope import NO_HOST, shared_dirs
from snapledger.projections.space import VmSpace
from snapledger.projections.view import LedgerView, replacing


@dataclasses.dataclass(frozen=True)
class Deletion:
    plan: Plan  # as carried out (a dry run: as it would be)
    bytes_freed: int  # the bytes of the files it deletes, measured on the disks before


class Snapledger(LedgerReading):
    def __init__(
        self,
        app: LedgerStore,
        storage: StoragePort,
        *,
        clock: Clock,
        projection: ViewProjection,
        runners: Runners,
        host: str | None,
        cost: CostModel | None = None,
        hypervisor: Hypervisor | None = None,
    ) -> None:
        self.app = app
        # This host: the home of the VMs it adopts, the only VMs it changes (semantics.md).
        # None: every host at once, for a replayed history (recorded facts, no disks of its own).
        self.host = host
        self.storage = storage
        self.clock = clock
        self.cost = cost or CostModel()
        self.projection = projection
        # Who carries out an operation, and whether it still runs (recover leaves those alone).
        self.runners = runners
        # Acts for VMs adopted from libvirt (vm.libvirt set); None: such VMs can't be changed.
        self.hypervisor = hypervisor
        back = _ServiceSeenByOperations(self)
        self.operations = Operations(back, storage, clock, runners, hypervisor, back.guard)
        self._view: LedgerView | None = None
        self.begun: list[str] = []  # the operations this service began, oldest first

    def close(self) -> None:
        """Let go of the ledger's connections now: the projection's and the store's (dropping
        the last reference to a Snapledger does the same, later)."""
        self.projection.close()
        self.app.close()

    def __enter__(self) -> Snapledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reading ---------------------------------------------------------------------

    @recording.operation("prune", vm="vm_name")
    def prune(
        self, vm_name: str, rules: KeepRules, branches: str = BranchOption.FORBID, dry_run: bool = False
    ) -> Pruned:
        """Delete the snapshots no keep rule holds (pruning.py)."""
        return pruning.prune(self, vm_name, rules, branches, dry_run)

    def own(self, name: str) -> VirtualMachine:
        """The VM of that name, loaded fresh, if it lives on this host (hosts.py)."""
        return hosts.own(self, name)

    def home_vms(self) -> list[str]:
        """The tracked VMs that live on this host: what a sweep without a VM covers."""
        return hosts.home_vms(self)

    def registry(self, vm: VirtualMachine) -> Registry:
        """Where `vm`'s home host finds and makes image registrations (hosts.py)."""
        return hosts.registry(self, vm)

    # ---- commands --------------------------------------------------------------------

    # Start tracking a VM over its disks and the chains below them: images.adopt, whose
    # signature and docstring it takes (one copy of the parameters).
    adopt = recording.operation("adopt", vm="name")(images.adopt)

    @recording.operation("snapshot", target="name")
    def snapshot(
        self,
        vm_name: str,
        name: str,
        overlays: Mapping[str, str] | None = None,
        exclude: Iterable[str] = (),
        description: str | None = None,
        domain_xml: str | None = None,
        dry_run: bool = False,
    ) -> Plan:
        vm, view = self.prepare(vm_name, dry_run)
        overlays = preconditions.user_overlays(self.storage, vm, overlays)
        plan = planners.plan_snapshot(
            view, vm_name, name, self._taken(view, vm), overlays, frozenset(exclude)
        )
        frozen = {s.disk: vm.disks[s.disk] for s in plan.steps if isinstance(s, SetActive)}
        if (hypervisor := self.operations.hypervisor_of(vm)) is not None and domain_xml is None:
            domain_xml = hypervisor.domain_xml(vm)  # the definition at this moment
        details: dict[str, object] = {"frozen": frozen, "description": description, "domain_xml": domain_xml or vm.domain_xml}
        return self._run(vm, plan, name, details, dry_run)

    @recording.operation("revert", target="name")
    def revert(
        self,
        vm_name: str,
        name: str,
        overlays: Mapping[str, str] | None = None,
        dry_run: bool = False,
        running: bool = False,
    ) -> Plan:
        """`running`: start the (libvirt) domain again afterwards."""
        vm, view = self.prepare(vm_name, dry_run)
        if running and vm.libvirt is None:
            raise BadInput(f"--running needs a VM adopted from libvirt; {vm_name!r} is not")
        overlays = preconditions.user_overlays(self.storage, vm, overlays)
        plan = planners.plan_revert(
            view, vm_name, name, self._taken(view, vm), overlays, self.dependants(vm, view)
        )
        return self._run(vm, plan, name, {}, dry_run, start=running)

    def delete(
        self,
        vm_name: str,
        name: str,
        strategy: str = Strategy.AUTO,
        branches: str = BranchOption.FORBID,
        dry_run: bool = False,
    ) -> Plan:
        return self.deletion(vm_name, name, strategy, branches, dry_run).plan

    @recording.operation("delete", target="name")
    def deletion(
        self,
        vm_name: str,
        name: str,
        strategy: str = Strategy.AUTO,
        branches: str = BranchOption.FORBID,
        dry_run: bool = False,
    ) -> Deletion:
        """`delete`, with the bytes of the files it deletes, measured before it ran."""
        vm, view = self.prepare(vm_name, dry_run)
        dependants = self.dependants(vm, view)
        plan = planners.plan_delete(view, vm_name, name, strategy, branches, self.cost, dependants)
        if (hypervisor := self.operations.hypervisor_of(vm)) is not None and strategy == Strategy.AUTO:
            try:
                hypervisor.check_live(vm, plan)
            except LiveStepImpossible:  # a pull a running domain can't do: commit instead
                plan = planners.plan_delete(
                    view, vm_name, name, Strategy.COMMIT, branches, self.cost, dependants
                )
        freed = space.freed_by(self, vm, view, plan)
        return Deletion(self._run(vm, plan, name, {}, dry_run), freed)

    def usage(self, vm_name: str | None = None) -> list[VmSpace]:
        """Space per snapshot and image of VM `vm_name` (or of every VM tracked), measured on
        the disks (space.py); read-only."""
        return space.usage(self, vm_name)

    @recording.operation("gc")
    def gc(
        self, vm_name: str | None = None, include_detached: bool = False, dry_run: bool = False
    ) -> list[Plan]:
        names = [vm_name] if vm_name is not None else self.home_vms()
        plans = []
        for number, name in enumerate(names):
            if number:
                self.next_operation()  # each VM's collection is an operation of its own
            vm, view = self.prepare(name, dry_run)
            plan = planners.plan_gc(view, name, include_detached, self.dependants(vm, view))
            if plan.steps:
                plans.append(self._run(vm, plan, None, {}, dry_run))
        return plans

    # Give a VM a new home host: hosts.move, whose signature and docstring it takes.
    move = recording.operation("move", target="to")(hosts.move)

    @recording.operation("swap-disk", target="disk")
    def swap_disk(self, vm_name: str, disk: str, path: str) -> None:
        """Record that `disk` now uses the image at `path`, which the user put in place."""
        images.swap_disk(self, vm_name, disk, path)

    @recording.operation("recover")
    def recover(self, vm_name: str | None = None, pivoted: bool = False) -> list[str]:
        """Finish every operation a crash or failure left open (all steps are safe to redo).
        `pivoted`: the operator vouches that the live active commit `vm_name`'s operation was
        at pivoted onto its base (by hand) and the domain ran there since (recorded first)."""
        return recovery.recover(self, vm_name, pivoted)

    @recording.operation("reconcile")
    def reconcile(self, vm_name: str, dry_run: bool = False) -> Reconciliation:
        """Record the disks' reality where it differs from the ledger, writing and deleting no
        image (reconcile.py)."""
        return reconcile(self, vm_name, dry_run)

    @recording.operation("retire")
    def retire(self, vm_name: str) -> list[str]:
        """End tracking of `vm_name`: its history stays, its images are let go (nothing is
        deleted). Returns the files snapledger made that are left on disk."""
        return images.retire(self, vm_name)

    def idle(self, vm_name: str) -> VirtualMachine:
        """The VM, loaded fresh, living on this host, with no operation open (a running one
        named as such)."""
        vm = self.own(vm_name)
        if vm.operation is not None and (
            busy := recovery.still_running(self.runners, vm.operation, vm.taken_over_from)
        ):
            raise OperationInProgress(f"VM {vm_name!r}: {busy}")
        vm.check_idle()
        return vm

    def unknown_dependants(self, vm_name: str) -> Mapping[str, list[str]] | None:
        """For each image of VM `vm_name`, the files in its directories that the ledger does not
        know and that rest on it (what `explain` names); read-only. None for a VM of another
        host: its directories are on its home host, not here."""
        vm = self.vm(vm_name)
        if self.host is not None and not vm.lives_on(self.host):
            return None
        return self.dependants(vm, self.refresh())

    def verify(self, vm_name: str | None = None) -> list[str]:
        """Compare every image the ledger knows with the disk; read-only. Findings, or []."""
        return queries.verify(self, vm_name)

    # ---- an operation: prepare, plan checks, run ---------------------------------------

    def prepare(
        self, vm_name: str, dry_run: bool = False, swapping: str | None = None
    ) -> tuple[VirtualMachine, LedgerView]:
        """Load the VM fresh, refresh the sizes of its active images, and give a view holding it.
        `swapping`: the disk a swap-disk records, whose libvirt source may differ and whose
        active image may have drifted or gone (that image is what the swap takes out of use)."""
        vm = self.idle(vm_name)  # the view caught up, and a copy of its VM
        checks = self.checks(vm)
        taken_out = vm.disks.get(swapping) if swapping is not None else None
        actives = {p for d, p in vm.disks.items() if d != swapping} - {taken_out}
        seen = checks.look(vm, sorted(actives))
        libvirt = self.operations.hypervisor_of(vm)
        hypervisor = libvirt.findings(vm, swapping) if libvirt is not None else []
        self._refuse_on_drift(vm, seen, record=not dry_run, extra=hypervisor)
        if taken_out is not None:  # its last size is worth keeping, a drifted identity is not
            out = checks.look(vm, [taken_out])
            if not checks.drift(vm, out):
                seen.update(out)
        vm.observe_images([facts for facts in seen.values() if isinstance(facts, ImageFacts)])
        return vm, replacing(self.view, vm)

    def _run(
        self,
        vm: VirtualMachine,
        plan: Plan,
        target: str | None,
        details: dict[str, object],
        dry_run: bool,
        start: bool = False,
    ) -> Plan:
        if vm.libvirt is not None and (self.hypervisor is not None or not dry_run):
            # the domain's own steps: live switch, stop, redefine (a replay's dry run: none)
            try:
                plan = self.operations.required_hypervisor(vm).shape(vm, plan, target, start)
            except DomainGone as gone:  # it was there a moment ago, when the disks were checked
                raise ConcurrentUpdate(
                    f"{gone}: the domain went away while the {plan.kind} was planned (destroyed? "
                    "a transient domain is gone once stopped); nothing was done"
                ) from None
        self.check_plan(vm, plan, record=not dry_run)
        if dry_run:
            return plan
        self.operations.storage_for(vm).check_tools()  # a missing qemu-img: before anything is recorded
        # the VM's operation has the command's id (`show`'s open operation is `log`'s); every
        # command that runs one begins its own (gc: one per VM), see recording.py
        op_id = self.app.operation or uuid.uuid4().hex
        self.operations.start(vm, op_id, plan, target, details)
        self.execute(vm)
        if (hypervisor := self.operations.hypervisor_of(vm)) is not None:
            notes = hypervisor.after(vm, plan, target)
            plan = dataclasses.replace(plan, notes=(*plan.notes, *notes))
        return plan

    def execute(self, vm: VirtualMachine, recovering: bool = False) -> None:
        """Carry out `vm`'s open operation (operation.py); if another process took it over
        meanwhile, say who carries it on, or return if it is finished."""
        assert vm.operation is not None
        op_id = vm.operation.op_id
        try:
            self.operations.execute(vm, recovering)
        except ConcurrentUpdate:
            recovery.after_conflict(self, vm.name, op_id)

    def check_plan(self, vm: VirtualMachine, plan: Plan, record: bool) -> None:
        """Before anything is recorded (and in a dry run, which records nothing): every image a
        destructive step touches is the file the ledger knows, size included; the chain below
        each merge is whole and in the VM's directories; nothing written or deleted has another
        name (drift, exit 3); and no other process holds what the plan writes, deletes or
        freezes (exit 4)."""
        checks = self.checks(vm)
        involved, extra = preconditions.plan_findings(checks, vm, plan)
        self._refuse_on_drift(vm, checks.look(vm, involved), record=record, extra=extra)
        try:
            checks.refuse_in_use(vm, plan)
        except ImageInUse as busy:
            raise ImageInUse(f"{busy}; nothing was done: try again once it has let go") from None

    def _check_same_files(self, vm: VirtualMachine, step: Step) -> None:
        """Right before a destructive step (the operation's guard): a file replaced behind our
        back is never written or deleted; a backing file outside is never opened."""
        checks = self.checks(vm)
        findings = preconditions.step_findings(checks, vm, step, self.dependants(vm, self.view))
        if findings:
            vm.record_drift(findings, self.clock())
            raise DriftDuringOperation(f"the disk disagrees with the ledger: {'; '.join(findings)}")
        checks.refuse_in_use(vm, Plan(OperationKind.STEP, (step,)))

    def dependants(self, vm: VirtualMachine, view: LedgerView) -> Mapping[str, list[str]]:
        return preconditions.unknown_dependants(self.operations.storage_for(vm), vm, view, self.refresh)

    def checks(self, vm: VirtualMachine) -> DiskChecks:
        return DiskChecks(self.operations.storage_for(vm))

    def _refuse_on_drift(
        self,
        vm: VirtualMachine,
        seen_on_disk: Mapping[str, ImageFacts | str],
        record: bool = True,
        extra: Iterable[str] = (),
    ) -> None:
        findings = list(dict.fromkeys([*self.checks(vm).drift(vm, seen_on_disk), *extra]))
        if findings:
            if record:  # a dry run reports drift but records nothing
                vm.record_drift(findings, self.clock())
                self.save(vm)
            raise DriftFound(preconditions.drift_refusal(vm.name, findings))

    def _taken(self, view: LedgerView, vm: VirtualMachine) -> Callable[[str], bool]:
        """Whether a path may not be a new overlay's: used in this ledger on `vm`'s host (its
        own storage or shared storage), or a file there now."""
        host, shared = (None if vm.home in NO_HOST else vm.home), shared_dirs(view)
        return lambda path: view.ever_used(path, host, shared) or self.storage.exists(path)

    # ---- recording -------------------------------------------------------------------

    def next_operation(self) -> str:
        """Record what follows as a new operation; its id."""
        operation = self.app.begin_operation()
        self.begun.append(operation)
        return operation

    def recorded_operations(self, since: int = 0) -> list[tuple[str, int]]:
        """The operations begun since `since` (an index into `begun`) that recorded something,
        each with the ledger position of its last event."""
        found = ((op, self.app.operation_position(op)) for op in self.begun[since:])
        return [(op, position) for op, position in found if position is not None]

    def save(self, *aggregates: object, unrecorded: str = "nothing was done") -> None:
        """Record the aggregates' new events atomically. A store that can't take them (its
        filesystem full, read-only) is the tool's own trouble: LedgerUnwritable (exit 1), saying
        what the disks hold that the ledger does not (`unrecorded`)."""
        try:
            self.app.record(*aggregates)
        except ConcurrentUpdate:
            raise ConcurrentUpdate(
                "another process changed this part of the ledger first; nothing was done, try again"
            ) from None
        except self.app.errors as error:
            raise LedgerUnwritable(
                f"the ledger could not record this ({self.app.describe(error)}); {unrecorded}"
            ) from None
        finally:
            try:
                self.refresh()
            except self.app.errors:
                pass  # the error above says what matters


class _ServiceSeenByOperations:
    """The service as its Operations see it (where they record, and the check before a
    destructive step), held weakly: the service owns its Operations, and a strong reference back
    would keep a dropped service, and the ledger's connections, alive until the cycle collector
    runs (a second service on the same SQLite file would then wait on its locks)."""

    def __init__(self, service: Snapledger) -> None:
        self._service = weakref.ref(service)

    def _live(self) -> Snapledger:
        service = self._service()
        if service is None:
            raise ReferenceError("the Snapledger these operations belong to is gone")
        return service

    def save(self, *aggregates: object, unrecorded: str = "nothing was done") -> None:
        self._live().save(*aggregates, unrecorded=unrecorded)

    def registry(self, vm: VirtualMachine) -> Registry:
        return self._live().registry(vm)

    def guard(self, vm: VirtualMachine, step: Step) -> None:
        self._live()._check_same_files(vm, step)


__all__ = ["Snapledger"]
