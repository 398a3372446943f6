"""The service layer: load, decide, record intent, carry out, record the result.

One composition of the event store (LedgerApplication), a storage adapter (StoragePort) and a
clock. Each command loads the aggregates it needs, asks a planner for a plan, records the plan
before any disk is touched, runs its steps one by one recording each, and closes the operation
with its kind's final event.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import RecordConflictError

from snapledger.domain.errors import (
    BadInput,
    BadPath,
    ConcurrentUpdate,
    DriftFound,
    DuplicateName,
    StorageError,
    UnknownVm,
)
from snapledger.domain.image_registry import ImageRegistration, image_id
from snapledger.domain.images import ImageFacts, Origin
from snapledger.domain.names import check_disk_target, check_name, check_user_path
from snapledger.domain.steps import (
    Commit,
    CreateOverlay,
    DeleteFile,
    Plan,
    Pull,
    RebaseUnsafe,
    SetActive,
    Step,
    touched_paths,
)
from snapledger.domain.vm import OperationRecord, VirtualMachine, vm_id
from snapledger.projections import planners
from snapledger.projections.cost import CostModel
from snapledger.projections.view import LedgerView, replacing

from .event_store import LedgerApplication
from .storage_port import StoragePort

Clock = Callable[[], str]


class DriftDuringOperation(StorageError):
    """A file changed identity in the middle of an operation: the step is not done, the
    operation stays open (failed) and `recover` retries once the user has put things right."""

    exit_code = 3


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Snapledger:
    def __init__(
        self,
        app: LedgerApplication,
        storage: StoragePort,
        clock: Clock = utc_now,
        cost: CostModel | None = None,
    ) -> None:
        self.app = app
        self.storage = storage
        self.clock = clock
        self.cost = cost or CostModel()
        self.view = LedgerView()
        self.refresh()

    # ---- reading ---------------------------------------------------------------------

    def refresh(self) -> LedgerView:
        """Catch the view up with everything recorded since it last looked (by anyone)."""
        self.view.apply_all(self.app.events_after(self.view.position))
        return self.view

    def vm(self, name: str) -> VirtualMachine:
        try:
            return self.app.repository.get(vm_id(name))
        except AggregateNotFoundError:
            raise UnknownVm(f"no VM named {name!r} in the ledger") from None

    # ---- commands --------------------------------------------------------------------

    def adopt(
        self,
        name: str,
        disks: Mapping[str, str],
        pools: Iterable[str] = (),
        domain_xml: str | None = None,
    ) -> None:
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
        if name in self.view.vms:
            raise DuplicateName(f"VM {name!r} is already in the ledger")
        images: dict[str, dict[str, object]] = {}
        for path in sorted(paths.values()):
            chain = self._user_chain(path)
            planners.check_new_disk_chain(self.view, name, [f.path for f in chain])
            for i, facts in enumerate(chain):
                if facts.path in images:
                    if i == 0 or images[facts.path]["origin"] == Origin.ADOPTED.value:
                        raise BadInput(f"{facts.path} is both a disk and below another disk")
                    continue
                origin = Origin.ADOPTED if i == 0 else Origin.FOUND
                images[facts.path] = {**facts.to_dict(), "origin": origin.value}
        vm = VirtualMachine(
            name=name,
            disks=paths,
            images=list(images.values()),
            pools=pools,
            domain_xml=domain_xml,
            at=self.clock(),
        )
        claims = [self._claimed(path, name) for path in images]
        self._save(vm, *claims)

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
        details: dict[str, object] = {"frozen": frozen, "description": description, "domain_xml": domain_xml or vm.domain_xml}
        return self._run(vm, plan, name, details, dry_run)

    def revert(
        self,
        vm_name: str,
        name: str,
        overlays: Mapping[str, str] | None = None,
        dry_run: bool = False,
    ) -> Plan:
        vm, view = self._prepare(vm_name, dry_run)
        overlays = self._user_overlays(vm, overlays)
        plan = planners.plan_revert(view, vm_name, name, self._taken(view), overlays)
        return self._run(vm, plan, name, {}, dry_run)

    def delete(
        self,
        vm_name: str,
        name: str,
        strategy: str = "auto",
        branches: str = "forbid",
        dry_run: bool = False,
    ) -> Plan:
        vm, view = self._prepare(vm_name, dry_run)
        plan = planners.plan_delete(view, vm_name, name, strategy, branches, self.cost)
        return self._run(vm, plan, name, {}, dry_run)

    def gc(
        self, vm_name: str | None = None, include_detached: bool = False, dry_run: bool = False
    ) -> list[Plan]:
        names = [vm_name] if vm_name is not None else sorted(self.refresh().vms)
        plans = []
        for name in names:
            vm, view = self._prepare(name, dry_run)
            plan = planners.plan_gc(view, name, include_detached)
            if plan.steps:
                plans.append(self._run(vm, plan, None, {}, dry_run))
        return plans

    def swap_disk(self, vm_name: str, disk: str, path: str) -> None:
        vm, view = self._prepare(vm_name)
        vm.check_disk(disk)
        chain = self._user_chain(check_user_path(path))
        planners.plan_swap(view, vm_name, disk, [f.path for f in chain])
        vm.swap_disk(disk, chain, self.clock())
        claims = [self._claimed(f.path, vm_name) for f in chain]
        self._save(vm, *claims)

    def recover(self, vm_name: str | None = None) -> list[str]:
        """Finish every operation a crash or failure left open (all steps are safe to redo)."""
        names = [vm_name] if vm_name is not None else sorted(self.refresh().vms)
        finished = []
        for name in names:
            op = self.vm(name).operation
            if op is not None:
                self._execute(name)
                finished.append(f"{name}: finished {op.kind} {op.op_id}")
        return finished

    def verify(self, vm_name: str | None = None) -> list[str]:
        """Compare every image the ledger knows with the disk; read-only. Findings, or []."""
        self.refresh()
        names = [vm_name] if vm_name is not None else sorted(self.view.vms)
        findings: list[str] = []
        for name in names:
            vm = self.vm(name)
            if vm.operation is not None:
                findings.append(f"{name}: unfinished {vm.operation.kind} {vm.operation.op_id}")
            drift = self._drift(vm, self._look(sorted(vm.images)))
            findings += [f"{name}: {finding}" for finding in drift]
        return findings

    # ---- the operation lifecycle -----------------------------------------------------

    def _prepare(
        self, vm_name: str, dry_run: bool = False
    ) -> tuple[VirtualMachine, LedgerView]:
        """Load the VM fresh, refresh the sizes of its active images, and give a view holding it."""
        self.refresh()
        vm = self.vm(vm_name)
        vm.check_idle()
        seen = self._look(sorted(set(vm.disks.values())))
        self._refuse_on_drift(vm, seen, record=not dry_run)
        vm.observe_images([facts for facts in seen.values() if isinstance(facts, ImageFacts)])
        return vm, replacing(self.view, vm)

    def _run(
        self,
        vm: VirtualMachine,
        plan: Plan,
        target: str | None,
        details: dict[str, object],
        dry_run: bool,
    ) -> Plan:
        if dry_run:
            return plan
        involved = sorted(
            {p for s in plan.steps if s.destructive for p in touched_paths(s) if p in vm.images}
            - set(vm.disks.values())
        )
        self._refuse_on_drift(vm, self._look(involved))
        op_id = uuid.uuid4().hex
        details = {**details, "previous_active": dict(vm.disks)}
        vm.start_operation(op_id, plan.kind, target, plan, [], details, self.clock())
        registrations = self._reserve(vm.name, op_id, plan.steps)
        self._save(vm, *registrations)
        self._execute(vm.name)
        return plan

    def _execute(self, vm_name: str) -> None:
        while True:
            vm = self.vm(vm_name)
            op = vm.operation
            if op is None:
                return
            if op.done == len(op.steps):
                self._finish(vm, op)
                return
            index = op.done
            step = op.steps[index]
            try:
                if step.destructive:
                    self._check_same_files(vm, touched_paths(step))
                observed = self._carry_out(step)
            except StorageError as error:
                self._on_failure(vm, op, index, error)
                raise
            vm.complete_step(op.op_id, index, observed)
            self._save(vm)

    def _check_same_files(self, vm: VirtualMachine, paths: Iterable[str]) -> None:
        """Right before a destructive step: each file is still the one the ledger knows (device
        and inode; sizes and backing may be mid-change after a crash). A file replaced behind
        our back is never written or deleted."""
        for path in paths:
            record = vm.images.get(path)
            if record is None or not self.storage.exists(path):
                continue
            seen = self.storage.inspect(path)
            if (seen.device, seen.inode) != (record.facts.device, record.facts.inode):
                finding = f"{path}: replaced (inode {record.facts.inode} -> {seen.inode})"
                vm.record_drift([finding], self.clock())
                raise DriftDuringOperation(f"the disk disagrees with the ledger: {finding}")

    def _carry_out(self, step: Step) -> list[ImageFacts]:
        return carry_out(self.storage, step)

    def _on_failure(
        self, vm: VirtualMachine, op: OperationRecord, index: int, error: StorageError
    ) -> None:
        step = op.steps[index]
        if op.started_destruction or step.destructive:
            vm.fail_operation(op.op_id, index, str(error))
            self._save(vm)
            return
        created = [s.path for s in op.steps[:index] if isinstance(s, CreateOverlay)]
        for path in reversed(created):
            if self.storage.exists(path):
                self.storage.delete(path)
        vm.roll_back_operation(op.op_id, created, str(error))
        planned = [s.path for s in op.steps if isinstance(s, CreateOverlay)]  # failed one too
        registrations = self._release(vm.name, op, gone={p: True for p in planned})
        self._save(vm, *registrations)

    def _finish(self, vm: VirtualMachine, op: OperationRecord) -> None:
        gone = vm.paths_let_go(op.op_id)
        vm.close_operation(op.op_id, self.clock())
        self._save(vm, *self._release(vm.name, op, gone))

    # ---- cross-VM registrations ------------------------------------------------------

    def _registration(self, path: str) -> ImageRegistration | None:
        try:
            return self.app.repository.get(image_id(path))
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
        out = []
        paths = {p for s in op.steps for p in touched_paths(s)} | set(gone)
        for path in sorted(paths):
            registration = self._registration(path)
            if registration is None:
                continue
            if path in gone:
                registration.end_use(vm_name, deleted=gone[path])
            else:
                registration.finish_change(vm_name, op.op_id)
            out.append(registration)
        return out

    # ---- checks ----------------------------------------------------------------------

    def _user_chain(self, path: str) -> list[ImageFacts]:
        """The chain of a file the user names: a file that is missing or not an image we can use
        is bad input, not a storage failure."""
        if not self.storage.exists(path):
            raise BadPath(f"{path} does not exist")
        try:
            return self.storage.inspect_chain(path)
        except StorageError as error:
            raise BadInput(f"{path} can't be used: {error}") from None

    def _seen(self, path: str) -> ImageFacts | str:
        try:
            return self.storage.inspect(path)
        except StorageError as error:
            return f"{path}: {error}"

    def _drift(self, vm: VirtualMachine, seen_on_disk: Mapping[str, ImageFacts | str]) -> list[str]:
        """Where the disk disagrees with what `vm` recorded. Active images change size as the
        guest writes; every other image must keep its size too."""
        actives = set(vm.disks.values())
        findings: list[str] = []
        for path, seen in seen_on_disk.items():
            if isinstance(seen, str):
                findings.append(seen)
                continue
            changed = vm.images[path].facts.identity_differs(seen, check_size=path not in actives)
            if changed:
                findings.append(f"{path}: {', '.join(changed)}")
        return findings

    def _look(self, paths: Iterable[str]) -> dict[str, ImageFacts | str]:
        return {path: self._seen(path) for path in paths}

    def _refuse_on_drift(
        self, vm: VirtualMachine, seen_on_disk: Mapping[str, ImageFacts | str], record: bool = True
    ) -> None:
        findings = self._drift(vm, seen_on_disk)
        if findings:
            if record:  # a dry run reports drift but records nothing
                vm.record_drift(findings, self.clock())
                self._save(vm)
            raise DriftFound(f"the disk disagrees with the ledger: {'; '.join(findings)}")

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
            if self.storage.exists(checked[disk]):
                raise BadPath(f"{path} exists")
        return checked

    def _save(self, *aggregates: object) -> None:
        try:
            self.app.save(*aggregates)  # type: ignore[arg-type]
        except RecordConflictError:
            raise ConcurrentUpdate(
                "another process changed this part of the ledger first; nothing was done, try again"
            ) from None
        finally:
            self.refresh()


def carry_out(storage: StoragePort, step: Step) -> list[ImageFacts]:
    """Do one storage step, or see from the disk that it was done before a crash; return the
    facts of the files it changed, as observed afterwards."""
    if isinstance(step, CreateOverlay):
        if storage.exists(step.path):
            facts = storage.inspect(step.path)
            if facts.backing != step.backing or facts.format != "qcow2":
                raise StorageError(f"{step.path} exists and is not the overlay this operation made")
        else:
            storage.create_overlay(step.path, step.backing, step.backing_format, step.virtual_size)
        return [storage.inspect(step.path)]
    if isinstance(step, Commit):
        storage.commit(step.top, step.base)
        return [storage.inspect(step.base), storage.inspect(step.top)]
    if isinstance(step, (Pull, RebaseUnsafe)):
        if storage.inspect(step.image).backing != step.new_backing:
            if isinstance(step, Pull):
                storage.pull(step.image, step.new_backing, step.new_backing_format)
            else:
                storage.rebase_unsafe(step.image, step.new_backing, step.new_backing_format)
        return [storage.inspect(step.image)]
    if isinstance(step, DeleteFile):
        if storage.exists(step.path):
            storage.delete(step.path)
        return []
    return []  # ledger-only steps


__all__ = ["Snapledger", "carry_out", "utc_now"]
