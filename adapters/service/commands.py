"""The service layer: load, decide, record intent, carry out, record the result.

One composition of the event store (LedgerApplication), a storage adapter (StoragePort) and a
clock. Each command loads the aggregates it needs, asks a planner for a plan, records the plan
before any disk is touched, runs its steps one by one recording each, and closes the operation
with its kind's final event.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import posixpath
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Concatenate, NoReturn, ParamSpec, TypeVar

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import PersistenceError, RecordConflictError

from snapledger.adapters.checkpoint.persisted import STORE_ERRORS, PersistedProjection
from snapledger.adapters.eventstore.application import LedgerApplication, project_events
from snapledger.adapters.eventstore.failures import describe
from snapledger.adapters.eventstore.store_url import parse_store_url
from snapledger.adapters.host.processes import LocalProcesses, carrying_out, files_open_here
from snapledger.adapters.libvirt.port import NoSuchDomain
from snapledger.adapters.service.drift import (
    DiskChecks,
    changed_paths,
    recorded_format,
    written_paths,
)
from snapledger.adapters.service.ports import StoragePort
from snapledger.adapters.service.reconcile import Reconciliation, reconciliation
from snapledger.adapters.service.step_execution import carry_out
from snapledger.domain.errors import (
    BadInput,
    BadPath,
    ConcurrentUpdate,
    DriftFound,
    DuplicateName,
    ImageInUse,
    LedgerDamaged,
    LedgerUnwritable,
    OperationInProgress,
    OutsideAllowedDirs,
    SnapledgerError,
    StorageError,
    ToolMissing,
    UnknownVm,
)
from snapledger.domain.image_registry import ImageRegistration, image_id, release_registrations
from snapledger.domain.images import ImageFacts, Origin
from snapledger.domain.names import check_disk_target, check_name, check_user_path
from snapledger.domain.steps import (
    DOMAIN_STEPS,
    Commit,
    CreateOverlay,
    DeleteFile,
    Plan,
    Pull,
    SetActive,
    Step,
    touched_paths,
)
from snapledger.domain.vm import OperationRecord, VirtualMachine, vm_id
from snapledger.projections import planners
from snapledger.projections.cost import CostModel
from snapledger.projections.history import event_time
from snapledger.projections.view import LedgerView, replacing

if TYPE_CHECKING:
    from snapledger.adapters.libvirt.hypervisor import LibvirtHypervisor

Clock = Callable[[], str]


class DriftDuringOperation(StorageError):
    """A file changed identity in the middle of an operation: the step is not done, the
    operation stays open (failed) and `recover` retries once the user has put things right."""

    exit_code = 3


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _checkpointed(
    command: Callable[Concatenate[Snapledger, _P], _R],
) -> Callable[Concatenate[Snapledger, _P], _R]:
    """A command ends by bringing the persisted projection up to date, also when it fails
    part way (what it saved is folded in)."""

    def run(self: Snapledger, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return command(self, *args, **kwargs)
        finally:
            self.checkpoint()

    functools.update_wrapper(run, command)
    return run


class Snapledger:
    def __init__(
        self,
        app: LedgerApplication,
        storage: StoragePort,
        clock: Clock = utc_now,
        cost: CostModel | None = None,
        projection: PersistedProjection | None = None,
        hypervisor: LibvirtHypervisor | None = None,
        processes: LocalProcesses | None = None,
    ) -> None:
        self.app = app
        self.storage = storage
        # Acts for VMs adopted from libvirt (vm.libvirt set); None: such VMs can't be changed.
        self.hypervisor = hypervisor
        # Who carries out an operation, and whether it still runs (recover leaves those alone).
        self.processes = processes or LocalProcesses()
        self.clock = clock
        self.cost = cost or CostModel()
        self.projection = projection if projection is not None else PersistedProjection(app)
        self._view: LedgerView | None = None

    # ---- reading ---------------------------------------------------------------------

    @property
    def view(self) -> LedgerView:
        """Every aggregate of the ledger, as of the last refresh. Made on first use from the
        persisted projection's newest checkpoint and the events after it, never by folding
        the whole ledger (unless there is no checkpoint yet); the projection is then saved."""
        if self._view is None:
            self._view = self.projection.present()
        return self._view

    @view.setter
    def view(self, view: LedgerView) -> None:
        self._view = view

    def refresh(self) -> LedgerView:
        """Catch the view up with everything recorded since it last looked (by anyone)."""
        return self.projection.catch_up(self.view)

    def checkpoint(self) -> None:
        """Bring the persisted projection up to the view (cheap: only what changed). Every
        command ends with it; a crash before it only leaves the next reader more to catch up."""
        if self._view is not None:
            self.projection.save(self._view)

    def last_position(self) -> int:
        """The ledger position of the last event recorded (0 for an empty ledger)."""
        return self.app.last_position()

    def view_at(self, position: int) -> LedgerView:
        """The whole ledger's state right after the event at `position` (0: before the first
        event): the state `show` gave at that moment. The one way into the past."""
        last = self.last_position()
        if not 0 <= position <= last:
            raise BadInput(f"position {position} is not in the ledger (it runs from 1 to {last})")
        return self.projection.view_at(position)  # the nearest checkpoint, then the events

    def position_at(self, when: datetime) -> int:
        """The position of the last event whose time is at or before `when` (0 if none).

        Walks the whole log: event times need not grow with positions (hosts' clocks differ)."""
        found = 0
        for event, position in self.app.events_after(0):
            if event_time(event) <= when:
                found = position
        return found

    def vm(self, name: str) -> VirtualMachine:
        known = self.view.vms.get(name)  # the newest VM of that name (after a retire)
        try:
            vm: VirtualMachine = self.app.repository.get(
                known.id if known is not None else vm_id(name), projector_func=project_events
            )
            return vm
        except AggregateNotFoundError:
            raise UnknownVm(f"no VM named {name!r} in the ledger") from None
        except (LedgerDamaged, PersistenceError):  # the store's own trouble is not drift (exit 1)
            raise
        except Exception as error:  # a stored fact that can't be read or applied was changed
            raise LedgerDamaged(
                f"the events of VM {name!r} can't be read back ({type(error).__name__}: {error}); "
                "run `snapledger verify`"
            ) from error

    # ---- commands --------------------------------------------------------------------

    @_checkpointed
    def adopt(
        self,
        name: str,
        disks: Mapping[str, str],
        pools: Iterable[str] = (),
        domain_xml: str | None = None,
        origins: Mapping[str, Origin] | None = None,
        extend: Callable[[VirtualMachine], None] | None = None,
    ) -> None:
        """`origins` overrides the origin of some chain images (adopt --libvirt: overlays libvirt's
        snapshots made are managed); `extend` records more events of the new VM in the same save."""
        check_name("VM", name)
        if not disks:
            raise BadInput("adopt needs at least one disk (--disk vda=PATH)")
        for target in disks:
            check_disk_target(target)
        paths = {t: check_user_path(p) for t, p in disks.items()}
        if len(set(paths.values())) != len(paths):
            raise BadInput("two disks name the same file")
        pools = sorted({check_user_path(p) for p in pools})
        self.refresh()
        earlier = self.view.vms.get(name)
        if earlier is not None and earlier.retired is None:
            raise DuplicateName(f"VM {name!r} is already in the ledger")
        generation = earlier.generation + 1 if earlier is not None else 1
        images: dict[str, dict[str, object]] = {}
        allowed = {posixpath.dirname(p) for p in paths.values()} | set(pools)
        for path in sorted(paths.values()):
            chain = self._user_chain(
                path, allowed, f"VM {name!r}", "add --pool {dir} if the VM may use files there"
            )
            planners.check_new_disk_chain(self.view, name, [f.path for f in chain])
            for i, facts in enumerate(chain):
                if facts.path in images:
                    if i == 0 or images[facts.path]["origin"] == Origin.ADOPTED.value:
                        raise BadInput(f"{facts.path} is both a disk and below another disk")
                    continue
                origin = Origin.ADOPTED if i == 0 else Origin.FOUND
                origin = (origins or {}).get(facts.path, origin)
                images[facts.path] = {**facts.to_dict(), "origin": origin.value}
        vm = VirtualMachine(
            name=name,
            disks=paths,
            images=list(images.values()),
            pools=pools,
            domain_xml=domain_xml,
            at=self.clock(),
            confined=True,  # chains are checked against the disks' dirs and pools from now on
            generation=generation,
        )
        if extend is not None:
            extend(vm)
        claims = [self._claimed(path, name) for path in images]
        self._save(vm, *claims)

    @_checkpointed
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
        vm, view = self._prepare(vm_name, dry_run)
        overlays = self._user_overlays(vm, overlays)
        plan = planners.plan_snapshot(
            view, vm_name, name, self._taken(view), overlays, frozenset(exclude)
        )
        frozen = {s.disk: vm.disks[s.disk] for s in plan.steps if isinstance(s, SetActive)}
        if (hypervisor := self._libvirt(vm)) is not None and domain_xml is None:
            domain_xml = hypervisor.domain_xml(vm)  # the definition at this moment
        details: dict[str, object] = {"frozen": frozen, "description": description, "domain_xml": domain_xml or vm.domain_xml}
        return self._run(vm, plan, name, details, dry_run)

    @_checkpointed
    def revert(
        self,
        vm_name: str,
        name: str,
        overlays: Mapping[str, str] | None = None,
        dry_run: bool = False,
        running: bool = False,
    ) -> Plan:
        """`running`: start the (libvirt) domain again afterwards."""
        vm, view = self._prepare(vm_name, dry_run)
        if running and vm.libvirt is None:
            raise BadInput(f"--running needs a VM adopted from libvirt; {vm_name!r} is not")
        overlays = self._user_overlays(vm, overlays)
        plan = planners.plan_revert(
            view, vm_name, name, self._taken(view), overlays, self._dependants(vm, view)
        )
        return self._run(vm, plan, name, {}, dry_run, start=running)

    @_checkpointed
    def delete(
        self,
        vm_name: str,
        name: str,
        strategy: str = "auto",
        branches: str = "forbid",
        dry_run: bool = False,
    ) -> Plan:
        vm, view = self._prepare(vm_name, dry_run)
        dependants = self._dependants(vm, view)
        plan = planners.plan_delete(view, vm_name, name, strategy, branches, self.cost, dependants)
        if (hypervisor := self._libvirt(vm)) is not None and strategy == "auto":
            from snapledger.adapters.libvirt.hypervisor import LiveStepImpossible

            try:
                hypervisor.check_live(vm, plan)
            except LiveStepImpossible:  # a pull a running domain can't do: commit instead
                plan = planners.plan_delete(
                    view, vm_name, name, "commit", branches, self.cost, dependants
                )
        return self._run(vm, plan, name, {}, dry_run)

    @_checkpointed
    def gc(
        self, vm_name: str | None = None, include_detached: bool = False, dry_run: bool = False
    ) -> list[Plan]:
        names = [vm_name] if vm_name is not None else sorted(self.refresh().live_vms())
        plans = []
        for name in names:
            vm, view = self._prepare(name, dry_run)
            plan = planners.plan_gc(view, name, include_detached, self._dependants(vm, view))
            if plan.steps:
                plans.append(self._run(vm, plan, None, {}, dry_run))
        return plans

    @_checkpointed
    def swap_disk(self, vm_name: str, disk: str, path: str) -> None:
        vm, view = self._prepare(vm_name, swapping=disk)
        vm.check_disk(disk)
        chain = self._user_chain(
            check_user_path(path), vm.allowed_dirs(), f"VM {vm_name!r}",
            "put the image in one of them (a VM's directories are its disks' and the --pool "
            "directories given at adopt)",
        )
        planners.plan_swap(view, vm_name, disk, [f.path for f in chain])
        # Every check (the aggregate's, the claims') before libvirt is touched: a refused swap
        # must not leave the domain defined on, say, a snapshot's frozen image.
        vm.swap_disk(disk, chain, self.clock())
        claims = [self._claimed(f.path, vm_name) for f in chain]
        if vm.libvirt is None:
            self._save(vm, *claims)
            return
        hypervisor = self._hypervisor(vm)
        previous = hypervisor.swap(vm, disk, chain[0].path)  # libvirt uses it, or is redefined
        vm.record_definition(hypervisor.current_definition(vm), self.clock())
        try:
            self._save(vm, *claims)
        except BaseException:
            if previous is not None:  # not recorded: put the definition back as it was
                hypervisor.restore_definition(vm, previous)
            raise

    @_checkpointed
    def recover(self, vm_name: str | None = None, pivoted: bool = False) -> list[str]:
        """Finish every operation a crash or failure left open (all steps are safe to redo).
        `pivoted`: the operator vouches that the live active commit `vm_name`'s operation was
        at pivoted onto its base (by hand) and the domain ran there since (recorded first)."""
        if pivoted:
            assert vm_name is not None
            self._vouch_pivot(vm_name)
        names = [vm_name] if vm_name is not None else sorted(self.refresh().live_vms())
        finished: list[str] = []
        left_alone: list[str] = []
        for name in names:
            vm = self.vm(name)
            op = vm.operation
            if op is None:
                continue
            busy = self._still_running(vm, op)
            if busy is not None:
                left_alone.append(f"{name}: {busy}")
                continue
            created = [s.path for s in op.steps[: op.done] if isinstance(s, CreateOverlay)]
            if not op.started_destruction and any(not self.storage.exists(p) for p in created):
                # a roll back cut short (a crash, or the ledger full while it was recorded):
                # nothing destructive happened, so finish undoing it rather than go on
                self._roll_back(vm, op, op.done, StorageError("an overlay it made is gone"))
                finished.append(f"{name}: rolled back {op.kind} {op.op_id}")
                continue
            try:  # nothing is recorded while another process holds what is left to do
                self._checks(vm).refuse_in_use(vm, Plan(op.kind, op.steps[op.done :]))
            except ImageInUse as held:
                raise ImageInUse(
                    f"{held}; the {op.kind} operation {op.op_id} stays open: run 'snapledger "
                    "recover' once that process has finished"
                ) from None
            if (hypervisor := self._libvirt(vm)) is not None:
                hypervisor.check_resumable(vm, op)  # a domain started on the wrong image: exit 3
            vm.resume_operation(op.op_id, self.processes.this_process(), self.clock())
            self._save(vm)  # a second recover racing this one fails here, before any step
            self._execute(vm, recovering=True)
            notes: list[str] = []
            if (hypervisor := self._libvirt(vm)) is not None:  # as after a run: start, forget
                notes = hypervisor.after(vm, Plan(op.kind, op.steps), op.target)
                notes += hypervisor.after_recover(vm, op)
            notes += [
                f"{top} was kept on disk, not deleted: the pivot onto its base is only vouched "
                "for (--pivoted); if it did not happen, the guest's last writes are in it. It is "
                "yours now (the ledger no longer tracks it): compare it with the disk, then "
                "delete it"
                for top in sorted(vouched_tops(op))
                if self.storage.exists(top)  # not when our own pivot superseded the word
            ]
            finished.append("; ".join([f"{name}: finished {op.kind} {op.op_id}", *notes]))
        if left_alone:
            raise OperationInProgress("; ".join([*finished, *left_alone]))
        return finished

    def _vouch_pivot(self, vm_name: str) -> None:
        """Record, on the operator's word, the pivot of the active commit in progress."""
        vm = self.vm(vm_name)
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
        if (busy := self._still_running(vm, op)) is not None:
            raise OperationInProgress(f"VM {vm_name!r}: {busy}")
        if not op.pivot_vouched(op.done):
            vm.record_pivot(op.op_id, op.done, disk, step.base, self.clock(), vouched=True)
            self._save(vm)

    def _still_running(self, vm: VirtualMachine, op: OperationRecord) -> str | None:
        """Why `op` is left alone (its process still carries it out, or another host's does),
        or None if its runner is gone and it may be finished here."""
        runner = op.runner
        running = self.processes.running(runner, op.op_id)
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

    @_checkpointed
    def reconcile(self, vm_name: str, dry_run: bool = False) -> Reconciliation:
        """Record the disks' reality where it differs from the ledger (new identities and
        backings, files found below, files gone), writing and deleting no image. Differences it
        can't record (a file outside the VM's directories, a file that is not the image it was)
        are refused (exit 3) with nothing recorded."""
        self.refresh()
        vm = self._idle(vm_name)
        found = reconciliation(vm, self._checks(vm))
        if found.unresolvable:
            raise DriftFound(
                f"reconcile can't record this: {'; '.join(found.unresolvable)}; put the files "
                "right (or swap-disk the disk), then run it again. Nothing was recorded"
            )
        hypervisor = self._libvirt(vm)
        stale = hypervisor.stale_definition(vm) if hypervisor is not None else None
        if stale is not None:
            # an image the stale definition names that changed on disk may be where the domain
            # ran and wrote: moving the definition off it could hide those writes
            checks = self._checks(vm)
            changed = [p for p in stale[1] if p in vm.images and checks.drift(vm, checks.look(vm, [p]))]
            if changed:
                raise DriftFound(
                    f"reconcile can't redefine the domain: its persistent definition names "
                    f"{', '.join(changed)}, which changed on disk since the ledger recorded it "
                    "(the domain may have run on it); put the definition right by hand, or "
                    f"retire the VM and adopt it again. Nothing was recorded"
                )
        if not dry_run and (found.changes or found.observed):
            vm.reconcile(found.observed, found.found, found.gone, found.disowned, self.clock())
            self._save(vm, *(self._claimed(f.path, vm_name) for f in found.found))
            if hypervisor is not None:  # the chains just recorded may make it stale (or not)
                stale = hypervisor.stale_definition(vm)
        if stale is not None:
            found.changes.append(self._redefined(vm, stale[0], dry_run))
        return found

    def _redefined(self, vm: VirtualMachine, xml: str, dry_run: bool) -> str:
        """reconcile's offer for a libvirt VM: a persistent definition on other images or chains
        than the ledger is redefined on the ledger's (no image is touched)."""
        hypervisor = self._hypervisor(vm)
        where = ", ".join(f"{d}={p}" for d, p in sorted(vm.disks.items()))
        if not dry_run:
            hypervisor.redefine(vm, xml)
            vm.record_definition(hypervisor.current_definition(vm), self.clock(), redefined=True)
            self._save(vm)
        return f"libvirt's persistent definition {'would be' if dry_run else 'was'} redefined on {where}"

    @_checkpointed
    def retire(self, vm_name: str) -> list[str]:
        """End tracking of `vm_name`: its history stays, its images are let go (nothing is
        deleted). Returns the files snapledger made that are left on disk."""
        self.refresh()
        vm = self._idle(vm_name)
        left_behind = sorted(
            path for path, record in vm.images.items()
            if record.origin is Origin.MANAGED and self.storage.exists(path)
        )
        vm.retire(self.clock())
        released = []
        for path in sorted(vm.images):
            registration = self._registration(path)
            if registration is not None:
                registration.end_use(vm_name, deleted=False)
                released.append(registration)
        self._save(vm, *released)
        return left_behind

    def _idle(self, vm_name: str) -> VirtualMachine:
        """The VM, loaded fresh, with no operation open (a running one named as such)."""
        vm = self.vm(vm_name)
        if vm.operation is not None and (busy := self._still_running(vm, vm.operation)):
            raise OperationInProgress(f"VM {vm_name!r}: {busy}")
        vm.check_idle()
        return vm

    def unknown_dependants(self, vm_name: str) -> dict[str, list[str]]:
        """For each image of VM `vm_name`, the files in its directories that the ledger does not
        know and that rest on it (what `explain` names); read-only."""
        vm = self.vm(vm_name)
        return self._dependants(vm, self.refresh())

    def verify(self, vm_name: str | None = None) -> list[str]:
        """Compare every image the ledger knows with the disk; read-only. Findings, or []."""
        self.refresh()
        names = [vm_name] if vm_name is not None else sorted(self.view.live_vms())
        findings: list[str] = []
        for name in names:
            vm = self.vm(name)
            if vm.retired is not None:
                continue  # no longer tracked: its disks are nobody's business here
            if vm.operation is not None:
                findings.append(f"{name}: unfinished {vm.operation.kind} {vm.operation.op_id}")
            checks = self._checks(vm)
            drift = checks.drift(vm, checks.look(vm, sorted(vm.images)))
            if (hypervisor := self._libvirt(vm)) is not None:
                drift += hypervisor.findings(vm)
            findings += [f"{name}: {finding}" for finding in drift]
        return findings

    # ---- the operation lifecycle -----------------------------------------------------

    def _prepare(
        self, vm_name: str, dry_run: bool = False, swapping: str | None = None
    ) -> tuple[VirtualMachine, LedgerView]:
        """Load the VM fresh, refresh the sizes of its active images, and give a view holding it.
        `swapping`: the disk a swap-disk records, whose libvirt source may differ and whose
        active image may have drifted or gone (that image is what the swap takes out of use)."""
        self.refresh()
        vm = self._idle(vm_name)
        checks = self._checks(vm)
        taken_out = vm.disks.get(swapping) if swapping is not None else None
        actives = {p for d, p in vm.disks.items() if d != swapping} - {taken_out}
        seen = checks.look(vm, sorted(actives))
        libvirt = self._libvirt(vm)
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
                plan = self._hypervisor(vm).shape(vm, plan, target, start)
            except NoSuchDomain as gone:  # it was there a moment ago, when the disks were checked
                raise ConcurrentUpdate(
                    f"{gone}: the domain went away while the {plan.kind} was planned (destroyed? "
                    "a transient domain is gone once stopped); nothing was done"
                ) from None
        self._check_plan(vm, plan, record=not dry_run)
        if dry_run:
            return plan
        op_id = uuid.uuid4().hex
        details = {
            **details, "previous_active": dict(vm.disks), "runner": self.processes.this_process()
        }
        if (hypervisor := self._libvirt(vm)) is not None:
            # whether the domain runs and in which QEMU, for recover; and the definition it
            # starts from, on the images the ledger says (a recorded one may predate this code)
            details.update(hypervisor.runtime(vm))
            vm.record_definition(hypervisor.current_definition(vm), self.clock())
        vm.start_operation(op_id, plan.kind, target, plan, [], details, self.clock())
        registrations = self._reserve(vm.name, op_id, plan.steps)
        self._save(vm, *registrations)
        self._execute(vm)
        if (hypervisor := self._libvirt(vm)) is not None:
            notes = hypervisor.after(vm, plan, target)
            plan = dataclasses.replace(plan, notes=(*plan.notes, *notes))
        return plan

    def _check_plan(self, vm: VirtualMachine, plan: Plan, record: bool) -> None:
        """Before anything is recorded (and in a dry run, which records nothing): every image a
        destructive step touches is the file the ledger knows, size included; the chain below
        each merge is whole and in the VM's directories; nothing written or deleted has another
        name (drift, exit 3); and no other process holds what the plan writes, deletes or
        freezes (exit 4)."""
        checks = self._checks(vm)
        destructive = [s for s in plan.steps if s.destructive]
        # ...and what a new overlay is made over (a revert's frozen images): there, and itself
        builds_on = {s.backing for s in plan.steps if isinstance(s, CreateOverlay)}
        involved = sorted(
            ({p for s in destructive for p in touched_paths(s)} | builds_on) & set(vm.images)
            - set(vm.disks.values())
        )
        extra = [f for s in destructive for f in checks.chain_findings(vm, s)]
        extra += checks.hard_links(p for s in destructive for p in written_paths(s))
        self._refuse_on_drift(vm, checks.look(vm, involved), record=record, extra=extra)
        try:
            checks.refuse_in_use(vm, plan)
        except ImageInUse as busy:
            raise ImageInUse(f"{busy}; nothing was done: try again once it has let go") from None

    def _execute(self, vm: VirtualMachine, recovering: bool = False) -> None:
        """Carry out `vm`'s open operation step by step, recording each. `vm` is loaded once:
        while its operation is open no other command records on it (a second `recover` racing
        this one fails its save), so the object stays current, and the VM's stream is not
        replayed again for every step."""
        assert vm.operation is not None
        hypervisor = self._libvirt(vm)
        if hypervisor is not None:
            hypervisor.on_pivot = functools.partial(self._record_pivot, vm)
        op_id = vm.operation.op_id
        try:
            with carrying_out(op_id):
                self._execute_steps(vm, recovering)
        except ConcurrentUpdate:
            self._after_conflict(vm.name, op_id)  # returns if another process finished it
        finally:
            if hypervisor is not None:
                hypervisor.on_pivot = None

    def _after_conflict(self, vm_name: str, op_id: str) -> None:
        """Another process recorded on the VM while this one carried out operation `op_id` (a
        `recover` that took it over): never "nothing was done" for what may be done. Returns if
        the operation is closed (finished elsewhere); raises ConcurrentUpdate saying who carries
        it on otherwise."""
        latest = self.vm(vm_name)
        op = latest.operation
        if op is None or op.op_id != op_id:
            last = next(  # the newest event of that operation, read from the end
                (e for e in self.app.repository.event_store.get(latest.id, desc=True)
                 if getattr(e, "op_id", None) == op_id), None,
            )
            if type(last).__name__ == "OperationRolledBack":
                raise ConcurrentUpdate(
                    f"another process rolled back the operation {op_id} this one carried out: "
                    "nothing of it stays done; try again"
                ) from None
            return  # finished (by whoever took it over): the command's work is done
        runner = op.runner or {}
        raise ConcurrentUpdate(
            f"another process (pid {runner.get('pid')} on {runner.get('host')}) took over the "
            f"{op.kind} operation {op_id} and carries it on ({op.done} of {len(op.steps)} steps "
            f"recorded done); see 'snapledger show {vm_name}'"
        ) from None

    def _record_pivot(self, vm: VirtualMachine, disk: str, base: str) -> None:
        """Recorded before the pivot is asked: without it, recover takes a domain found on
        `base` for one started there by hand (see LibvirtStorage._committed_live_before)."""
        op = vm.operation
        assert op is not None
        if op.pivot_requested(op.done, disk) == base and not op.pivot_vouched(op.done):
            return  # asked before (a "not ready" answer, then again)
        vm.record_pivot(op.op_id, op.done, disk, base, self.clock())
        self._save(vm, unrecorded=(
            f"nothing was pivoted: the {op.kind} operation {op.op_id} stays open; run "
            "'snapledger recover' once the ledger can be written"
        ))

    def _execute_steps(self, vm: VirtualMachine, recovering: bool) -> None:
        # The first step recover carries out may have been cut short mid-way (by a crash or a
        # failure): it is redone knowing that; every later one starts fresh.
        resumed = recovering
        while True:
            op = vm.operation
            if op is None:
                return
            if op.done == len(op.steps):
                self._finish(vm, op)
                return
            index = op.done
            step = op.steps[index]
            try:
                if recovering and (hypervisor := self._libvirt(vm)) is not None:
                    hypervisor.storage(vm, self.storage).await_job(step)
                if step.destructive:
                    self._check_same_files(vm, step)
                observed = self._carry_out(step, vm, resumed)
            except ImageInUse as busy:
                self._on_busy(vm, op, index, busy, recovering)
            except ToolMissing as missing:
                self._on_busy(vm, op, index, missing, recovering)
            except StorageError as error:
                self._on_failure(vm, op, index, error)
                raise
            resumed = False
            vm.complete_step(op.op_id, index, observed)
            if isinstance(step, SetActive) and (hypervisor := self._libvirt(vm)) is not None:
                # mid-operation too, the definition `show --json` gives names the disks' images
                vm.record_definition(hypervisor.current_definition(vm), self.clock())
            self._save(vm, unrecorded=(
                f"step {index + 1} of the {op.kind} operation {op.op_id} is done on disk but not "
                "recorded: once the ledger can be written (free space on its filesystem), run "
                "'snapledger recover', which does it again"
            ))

    def _check_same_files(self, vm: VirtualMachine, step: Step) -> None:
        """Right before a destructive step: each file is still the one the ledger knows and has
        no other name, every file the step opens lies in the VM's directories, and no other
        process holds what it writes. A file replaced behind our back is never written or
        deleted; a backing file outside is never opened."""
        checks = self._checks(vm)
        findings = checks.same_files(vm, step)
        dependants = self._dependants(vm, self.view)
        findings += [
            f"{path}: {', '.join(dependants[path])} rests on it (a file the ledger does not know "
            "appeared after this operation was planned); it is not changed while they do"
            for path in changed_paths(step)
            if path in dependants
        ]
        if findings:
            vm.record_drift(findings, self.clock())
            raise DriftDuringOperation(f"the disk disagrees with the ledger: {'; '.join(findings)}")
        checks.refuse_in_use(vm, Plan("step", (step,)))

    def _dependants(self, vm: VirtualMachine, view: LedgerView) -> dict[str, list[str]]:
        """For each of `vm`'s images, the files in its directories that the ledger does not
        know and whose backing chain reaches it (a user's own overlays): they make it stay.
        The directories of every VM tracked are looked in, not only `vm`'s: a user's disk that
        another VM adopted over one of `vm`'s images and then swapped away rests on it still,
        and the ledger has stopped holding it (found by the deep state-machine profile)."""
        directories = set(vm.allowed_dirs())
        for other in view.live_vms().values():
            directories |= other.allowed_dirs()
        scan = self._storage_for(vm).scan(sorted(directories))
        # Known after the scan: an overlay another process's operation made meanwhile was
        # registered before it was created, so it is never taken for a user's file.
        latest = self.refresh()
        known = {path for other in latest.live_vms().values() for path in other.images}
        known |= {path for path, reg in latest.registrations.items() if reg.users}
        known |= set(view.vms[vm.name].images) if vm.name in view.vms else set()
        found = {path: scan.dependants(path, known) for path in sorted(vm.images)}
        return {path: files for path, files in found.items() if files}

    def _checks(self, vm: VirtualMachine) -> DiskChecks:
        return DiskChecks(self._storage_for(vm))

    def _storage_for(self, vm: VirtualMachine) -> StoragePort:
        """The storage a VM's steps go to: for a libvirt VM, images its running domain has
        open are libvirt's (block jobs), the rest qemu-img's."""
        hypervisor = self._libvirt(vm)
        return hypervisor.storage(vm, self.storage) if hypervisor is not None else self.storage

    def _carry_out(self, step: Step, vm: VirtualMachine, resumed: bool = False) -> list[ImageFacts]:
        def format_of(path: str) -> str:
            return recorded_format(vm, path) or "qcow2"  # an overlay the operation creates

        # what a pulled image was backed by before the step (the ledger's facts change only
        # once the step is recorded done)
        before = vm.images.get(step.image) if isinstance(step, Pull) else None
        was = (before.facts.backing, before.facts.backing_format) if before else None
        if vm.libvirt is None:
            storage: StoragePort = self.storage
        else:
            hypervisor = self._hypervisor(vm)
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

    def _libvirt(self, vm: VirtualMachine) -> LibvirtHypervisor | None:
        """The libvirt adapter if `vm` is a libvirt domain and this ledger has one (a replayed
        ledger has none: it reads recorded facts only)."""
        return self.hypervisor if vm.libvirt is not None else None

    def _hypervisor(self, vm: VirtualMachine) -> LibvirtHypervisor:
        if self.hypervisor is None:
            raise BadInput(f"VM {vm.name!r} is a libvirt domain and this ledger has no libvirt adapter")
        return self.hypervisor

    def _on_failure(
        self, vm: VirtualMachine, op: OperationRecord, index: int, error: StorageError
    ) -> None:
        step = op.steps[index]
        if op.started_destruction or step.destructive:
            vm.fail_operation(op.op_id, index, str(error))
            self._save(vm, unrecorded=(
                f"step {index + 1} of the {op.kind} operation {op.op_id} failed ({error}) and "
                "that is not recorded either: run 'snapledger recover' once it can be written"
            ))
            return
        self._roll_back(vm, op, index, error)

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
        self._roll_back(vm, op, index, busy)
        raise error(f"{busy}; nothing was done: try again once {when}") from None

    def _roll_back(
        self, vm: VirtualMachine, op: OperationRecord, index: int,
        error: StorageError | ToolMissing,
    ) -> None:
        created = [s.path for s in op.steps[:index] if isinstance(s, CreateOverlay)]
        for path in reversed(created):
            if self.storage.exists(path):
                self.storage.delete(path)
        vm.roll_back_operation(op.op_id, created, str(error))
        planned = [s.path for s in op.steps if isinstance(s, CreateOverlay)]  # failed one too
        registrations = self._release(vm.name, op, gone={p: True for p in planned})
        self._save(vm, *registrations, unrecorded=(
            f"the {op.kind} operation {op.op_id} was undone on disk ({error}) but that is not "
            "recorded: run 'snapledger recover' once the ledger can be written"
        ))

    def _finish(self, vm: VirtualMachine, op: OperationRecord) -> None:
        gone = vm.paths_let_go(op.op_id)
        vm.close_operation(op.op_id, self.clock())
        if (hypervisor := self._libvirt(vm)) is not None:  # the definition on the final images
            vm.record_definition(hypervisor.current_definition(vm), self.clock())
        self._save(vm, *self._release(vm.name, op, gone), unrecorded=(
            f"every step of the {op.kind} operation {op.op_id} is done and recorded, its end is "
            "not: run 'snapledger recover' once the ledger can be written"
        ))

    # ---- cross-VM registrations ------------------------------------------------------

    def _registration(self, path: str) -> ImageRegistration | None:
        try:
            registration: ImageRegistration = self.app.repository.get(
                image_id(path), projector_func=project_events
            )
            return registration
        except AggregateNotFoundError:
            return None

    def _claimed(self, path: str, vm_name: str) -> ImageRegistration:
        registration = self._registration(path)
        if registration is None:
            return ImageRegistration(path=path, vm=vm_name)
        registration.add_user(vm_name)
        return registration

    def _reserve(self, vm_name: str, op_id: str, steps: tuple[Step, ...]) -> list[ImageRegistration]:
        out: dict[str, ImageRegistration] = {}
        for step in steps:
            if isinstance(step, CreateOverlay):
                if self._registration(step.path) is not None:
                    raise ConcurrentUpdate(f"{step.path} was registered by another operation")
                out[step.path] = ImageRegistration(path=step.path, vm=vm_name)
            elif step.destructive:
                for path in touched_paths(step):
                    registration = out.get(path) or self._registration(path)
                    if registration is None:
                        registration = ImageRegistration(path=path, vm=vm_name)
                    registration.reserve_change(vm_name, op_id)
                    out[path] = registration
        return list(out.values())

    def _release(
        self, vm_name: str, op: OperationRecord, gone: Mapping[str, bool]
    ) -> list[ImageRegistration]:
        touched = {p for s in op.steps for p in touched_paths(s)}
        return release_registrations(self._registration, vm_name, op.op_id, touched, gone)

    # ---- checks ----------------------------------------------------------------------

    def _user_chain(
        self, path: str, allowed: Iterable[str], whose: str, fix: str
    ) -> list[ImageFacts]:
        """The chain of a file the user names: a file that is missing or not an image we can use
        is bad input, not a storage failure. Every file of the chain must resolve inside the
        VM's `allowed` directories; one outside is refused before it is opened, and `fix`
        (with `{dir}`, that file's resolved directory) tells the user what to do."""
        if not self.storage.exists(path):
            raise BadPath(f"{path} does not exist")
        if self._is_the_ledger(path):
            raise BadPath(f"{path} is the ledger's own file, not a disk image")
        allowed = sorted(allowed)
        # a file the ledger holds already keeps its recorded format: only a new one is probed
        known = [v.images[path] for v in self.view.live_vms().values() if path in v.images]
        try:
            return self.storage.inspect_chain(path, allowed, known[0].facts.format if known else None)
        except OutsideAllowedDirs as outside:
            advice = fix.format(dir=posixpath.dirname(outside.resolved))
            raise BadPath(f"{outside} of {whose} ({', '.join(allowed)}): {advice}") from None
        except StorageError as error:
            raise BadInput(f"{path} can't be used: {error}") from None

    def _refuse_on_drift(
        self,
        vm: VirtualMachine,
        seen_on_disk: Mapping[str, ImageFacts | str],
        record: bool = True,
        extra: Iterable[str] = (),
    ) -> None:
        findings = list(dict.fromkeys([*self._checks(vm).drift(vm, seen_on_disk), *extra]))
        if findings:
            if record:  # a dry run reports drift but records nothing
                vm.record_drift(findings, self.clock())
                self._save(vm)
            raise DriftFound(
                f"the disk disagrees with the ledger: {'; '.join(findings)} (where the disks are "
                f"right, record them with 'snapledger reconcile {vm.name}'; --dry-run shows what "
                "it would record)"
            )

    def _is_the_ledger(self, path: str) -> bool:
        """A file this process has open (the ledger's SQLite files) is never taken for a disk."""
        try:
            seen = os.stat(path)
        except OSError:
            return False
        return (seen.st_dev, seen.st_ino) in files_open_here()

    def _store_label(self) -> str | None:
        try:
            return parse_store_url(self.app.store_url).label
        except SnapledgerError:
            return None

    def _taken(self, view: LedgerView) -> Callable[[str], bool]:
        used = view.paths_ever_used()
        return lambda path: path in used or self.storage.exists(path)

    def _user_overlays(
        self, vm: VirtualMachine, overlays: Mapping[str, str] | None
    ) -> dict[str, str]:
        allowed = vm.allowed_dirs()
        checked = {}
        for disk, path in (overlays or {}).items():
            vm.check_disk(disk)
            checked[disk] = check_user_path(path, allowed)
            parent = posixpath.dirname(checked[disk])
            if self.storage.resolve(parent) != parent:
                raise BadPath(f"{path} goes through a symlink ({parent} resolves to {self.storage.resolve(parent)})")
            if self.storage.exists(checked[disk]):
                raise BadPath(f"{path} exists")
        return checked

    def _save(self, *aggregates: object, unrecorded: str = "nothing was done") -> None:
        """Record the aggregates' new events atomically. A store that can't take them (its
        filesystem full, read-only) is the tool's own trouble: LedgerUnwritable (exit 1), saying
        what the disks hold that the ledger does not (`unrecorded`)."""
        try:
            self.app.save(*aggregates)
        except RecordConflictError:
            raise ConcurrentUpdate(
                "another process changed this part of the ledger first; nothing was done, try again"
            ) from None
        except STORE_ERRORS as error:
            raise LedgerUnwritable(
                f"the ledger could not record this ({describe(error, self._store_label())}); "
                f"{unrecorded}"
            ) from None
        finally:
            try:
                self.refresh()
            except STORE_ERRORS:
                pass  # the error above says what matters


def vouched_tops(op: OperationRecord | None) -> set[str]:
    """The tops of the operation's active commits whose pivot only the operator vouched for."""
    if op is None:
        return set()
    return {
        step.top for index, step in enumerate(op.steps)
        if isinstance(step, Commit) and op.pivot_vouched(index)
    }


__all__ = ["Snapledger", "utc_now"]
