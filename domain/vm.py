"""The VirtualMachine aggregate: one VM's whole history as one event stream.

Public methods check the rules and raise errors; the `@event` methods are the facts, and their
bodies are the only code that changes state, so replay is the same code path as the command.
Everything an event needs is passed in (paths, facts observed by adapters, times): no clock,
filesystem or randomness runs while an event is applied.
"""

from __future__ import annotations

import posixpath
from dataclasses import replace
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from .errors import (
    BadInput,
    OperationInProgress,
)
from .images import ImageFacts, ImageRecord, Origin
from .names import check_name
from .steps import (
    DeleteFile,
    Plan,
    ReleaseImage,
    SetActive,
    step_from_dict,
)
from .vm_queries import VmQueries
from .vm_records import (
    LEDGER_NAMESPACE,
    OperationRecord,
    SnapshotRecord,
    image_record_to_dict,
    record_from_dict,
    vm_id,
)
from .vm_steps import apply_step, observe


class VirtualMachine(VmQueries, Aggregate):
    # The libvirt domain this VM is (`uri`, `domain`), once `LibvirtBound` says so; None for a
    # VM known only by its disk files. A class default: VMs recorded before it stay as they were.
    libvirt: dict[str, str] | None = None
    generation: int = 1  # the how-manieth VM of this name (after `retire`, the name is free)
    retired: str | None = None  # when tracking ended (`Retired`); the history stays readable
    # The host the VM lives on, the only one that changes it (semantics.md, "Many hosts"): the
    # host that adopted it, or the one it was moved to. An `Adopted` stored before the home was
    # recorded gets the host its chain record names when it is read (eventstore/mapper.py).
    home: str = ""
    # Directories every host sees at the same path (NFS, a cluster filesystem), declared at adopt
    # (`--shared`): an image there is one image for every host; anywhere else it is the home
    # host's own (semantics.md, "Many hosts, one ledger").
    shared: tuple[str, ...] = ()
    # Hosts this VM was taken over from (`move --take-over`: the operator vouched they are
    # dead): an operation one of them started is gone, whatever its runner says.
    taken_over_from: tuple[str, ...] = ()

    @staticmethod
    def create_id(name: str, generation: int, **_: Any) -> UUID:
        return vm_id(name, generation)

    @event("Adopted")
    def __init__(
        self,
        name: str,
        disks: dict[str, str],
        images: list[dict[str, Any]],
        pools: list[str],
        domain_xml: str | None,
        at: str,
        confined: bool = False,
        generation: int = 1,
        home: str = "",
        shared: list[str] | None = None,
    ) -> None:
        self.name = name
        self.generation = generation
        self.home = home
        self.shared = tuple(shared or ())
        self.disks: dict[str, str] = dict(disks)
        self.images: dict[str, ImageRecord] = {}
        for item in images:
            record = record_from_dict(item)
            self.images[record.path] = record
        self.pools: list[str] = list(pools)
        # Directories of every disk image the VM has adopted (at adopt or by swap-disk); with
        # the pools, where the VM's files may be. Kept when an image is later released.
        self.adopted_dirs: set[str] = {posixpath.dirname(p) for p in disks.values()}
        if not confined:
            # Adopted before chains were confined (no `confined` in the stored event): every
            # file it recorded then stays where it may be, so upgrading refuses nothing new.
            self.adopted_dirs |= {posixpath.dirname(record.path) for record in self.images.values()}
        self.domain_xml = domain_xml
        self.snapshots: dict[str, SnapshotRecord] = {}
        self.current: str | None = None
        self.operation: OperationRecord | None = None
        self.adopted_at = at
        self.drift_findings: list[str] = []

    # ---- operations ----------------------------------------------------------------------

    def start_operation(
        self,
        op_id: str,
        kind: str,
        target: str | None,
        plan: Plan,
        observed: list[ImageFacts],
        details: dict[str, Any],
        at: str,
    ) -> None:
        self.check_idle()
        self._operation_started(
            op_id=op_id,
            kind=kind,
            target=target,
            plan=plan.to_dict(),
            observed=[f.to_dict() for f in observed],
            details=details,
            at=at,
        )

    @event("OperationStarted")
    def _operation_started(
        self,
        op_id: str,
        kind: str,
        target: str | None,
        plan: dict[str, Any],
        observed: list[dict[str, Any]],
        details: dict[str, Any],
        at: str,
    ) -> None:
        observe(self.images, observed)
        steps = tuple(step_from_dict(s) for s in plan["steps"])
        self.operation = OperationRecord(op_id, kind, target, steps, 0, None, dict(details))

    def _check_current_operation(self, op_id: str) -> OperationRecord:
        if self.operation is None or self.operation.op_id != op_id:
            raise OperationInProgress(f"operation {op_id} is not the one in progress")
        return self.operation

    def complete_step(self, op_id: str, index: int, observed: list[ImageFacts]) -> None:
        op = self._check_current_operation(op_id)
        if index != op.done:
            raise BadInput(f"step {index} completed out of order (next is {op.done})")
        self._step_completed(op_id=op_id, index=index, observed=[f.to_dict() for f in observed])

    @event("StorageStepCompleted")
    def _step_completed(self, op_id: str, index: int, observed: list[dict[str, Any]]) -> None:
        assert self.operation is not None
        apply_step(self.images, self.disks, self.snapshots, self.operation.steps[index])
        observe(self.images, observed)
        self.operation = replace(self.operation, done=index + 1, failure=None)

    def resume_operation(self, op_id: str, runner: dict[str, Any], at: str) -> None:
        """`recover` takes over the open operation `op_id`, whose runner is gone: recorded
        before it carries out any step, so two recovers racing can't both go on."""
        self._check_current_operation(op_id)
        self._operation_resumed(op_id=op_id, runner=dict(runner), at=at)

    @event("OperationResumed")
    def _operation_resumed(self, op_id: str, runner: dict[str, Any], at: str) -> None:
        assert self.operation is not None
        details = {**self.operation.details, "runner": dict(runner)}
        self.operation = replace(self.operation, details=details)

    def fail_operation(self, op_id: str, index: int, error: str) -> None:
        self._check_current_operation(op_id)
        self._operation_failed(op_id=op_id, index=index, error=error)

    @event("OperationFailed")
    def _operation_failed(self, op_id: str, index: int, error: str) -> None:
        assert self.operation is not None
        self.operation = replace(self.operation, failure=f"step {index}: {error}")

    def roll_back_operation(self, op_id: str, undone: list[str], reason: str) -> None:
        """Close an operation that changed nothing destructive; `undone` are files removed."""
        op = self._check_current_operation(op_id)
        if op.started_destruction:
            raise BadInput("an operation past a destructive step can only be finished")
        self._operation_rolled_back(op_id=op_id, undone=undone, reason=reason)

    @event("OperationRolledBack")
    def _operation_rolled_back(self, op_id: str, undone: list[str], reason: str) -> None:
        assert self.operation is not None
        for step in reversed(self.operation.steps[: self.operation.done]):
            if isinstance(step, SetActive):
                previous = self.operation.details.get("previous_active", {})
                self.disks[step.disk] = previous.get(step.disk, self.disks[step.disk])
        for path in undone:
            self.images.pop(path, None)
        self.operation = None

    def _check_finished(self, op_id: str, kind: str) -> OperationRecord:
        op = self._check_current_operation(op_id)
        if op.kind != kind or op.done != len(op.steps):
            raise BadInput(f"operation {op_id} is not a finished {kind}")
        return op

    # ---- closing events, one per kind -----------------------------------------------------

    def close_operation(self, op_id: str, at: str) -> None:
        """Record the closing event of the finished operation `op_id`, by its kind."""
        kind = self._check_current_operation(op_id).kind
        closers = {
            "snapshot": self.record_snapshot_taken,
            "revert": self.record_reverted,
            "delete": self.record_snapshot_deleted,
            "gc": self.record_images_discarded,
        }
        if kind not in closers:
            raise BadInput(f"operation {op_id} has an unknown kind {kind!r}")
        closers[kind](op_id, at)

    def paths_let_go(self, op_id: str) -> dict[str, bool]:
        """Files the operation deletes (True) or only stops tracking (False)."""
        op = self._check_current_operation(op_id)
        return {
            s.path: isinstance(s, DeleteFile)
            for s in op.steps
            if isinstance(s, (DeleteFile, ReleaseImage))
        }

    def record_snapshot_taken(self, op_id: str, at: str) -> None:
        op = self._check_finished(op_id, "snapshot")
        assert op.target is not None
        self._snapshot_taken(
            op_id=op_id,
            name=op.target,
            parent=self.current,
            frozen=dict(op.details["frozen"]),
            domain_xml=op.details.get("domain_xml", self.domain_xml),
            description=op.details.get("description"),
            at=at,
        )

    @event("SnapshotTaken")
    def _snapshot_taken(
        self,
        op_id: str,
        name: str,
        parent: str | None,
        frozen: dict[str, str],
        domain_xml: str | None,
        description: str | None,
        at: str,
    ) -> None:
        self.snapshots[name] = SnapshotRecord(name, parent, frozen, at, domain_xml, description)
        self.current = name
        self.operation = None

    def record_reverted(self, op_id: str, at: str) -> None:
        op = self._check_finished(op_id, "revert")
        assert op.target is not None
        self._reverted(op_id=op_id, name=op.target, at=at)

    @event("Reverted")
    def _reverted(self, op_id: str, name: str, at: str) -> None:
        snap = self.snapshots[name]
        self.current = name
        if snap.domain_xml is not None:
            self.domain_xml = snap.domain_xml
        self.operation = None

    def record_snapshot_deleted(self, op_id: str, at: str) -> None:
        op = self._check_finished(op_id, "delete")
        assert op.target is not None
        self._snapshot_deleted(op_id=op_id, name=op.target, at=at)

    @event("SnapshotDeleted")
    def _snapshot_deleted(self, op_id: str, name: str, at: str) -> None:
        gone = self.snapshots.pop(name)
        for child in [s for s in self.snapshots.values() if s.parent == name]:
            self.snapshots[child.name] = replace(child, parent=gone.parent)
        if self.current == name:
            self.current = gone.parent
        self.operation = None

    def record_images_discarded(self, op_id: str, at: str) -> None:
        op = self._check_finished(op_id, "gc")
        paths = [s.path for s in op.steps if isinstance(s, (DeleteFile, ReleaseImage))]
        self._images_discarded(op_id=op_id, paths=paths, at=at)

    @event("ImagesDiscarded")
    def _images_discarded(self, op_id: str, paths: list[str], at: str) -> None:
        self.operation = None

    # ---- facts without storage steps ----------------------------------------------------

    def swap_disk(self, disk: str, chain: list[ImageFacts], at: str) -> None:
        """The user put another image in place: it becomes adopted and active."""
        new = chain[0].path
        self.check_swappable(disk, new)
        added = []
        for i, facts in enumerate(chain):
            if facts.path not in self.images:
                origin = Origin.ADOPTED if i == 0 else Origin.FOUND
                added.append({**facts.to_dict(), "origin": origin.value})
        self._disk_swapped(
            disk=disk, path=new, previous=self.disks[disk], images=added, at=at
        )

    @event("DiskSwapped")
    def _disk_swapped(
        self, disk: str, path: str, previous: str, images: list[dict[str, Any]], at: str
    ) -> None:
        for item in images:
            record = record_from_dict(item)
            self.images[record.path] = record
        old = self.images[previous]
        self.images[previous] = replace(old, detached=True)
        self.disks[disk] = path
        self.adopted_dirs.add(posixpath.dirname(path))
        record = self.images[path]
        if record.detached:
            self.images[path] = replace(record, detached=False)

    def observe_images(self, observed: list[ImageFacts]) -> None:
        """Record fresh sizes of images that change legitimately (active images a guest writes)."""
        changed = [
            f.to_dict()
            for f in observed
            if f.path in self.images and self.images[f.path].facts != f
        ]
        if changed:
            self._images_observed(observed=changed)

    @event("ImagesObserved")
    def _images_observed(self, observed: list[dict[str, Any]]) -> None:
        observe(self.images, observed)

    def bind_libvirt(self, uri: str, domain: str) -> None:
        """This VM is the libvirt domain `domain` on `uri` (recorded at adopt --libvirt)."""
        self._libvirt_bound(uri=uri, domain=domain)

    @event("LibvirtBound")
    def _libvirt_bound(self, uri: str, domain: str) -> None:
        self.libvirt = {"uri": uri, "domain": domain}

    def record_pivot(
        self, op_id: str, index: int, disk: str, base: str, at: str, vouched: bool = False
    ) -> None:
        """Right before snapledger asks libvirt to pivot `disk` onto `base` (the end of the live
        active commit of step `index`): from then on the domain may write into `base`. Without
        this fact, `recover` knows that no pivot of ours happened, so a domain found running on
        `base` was started there by hand and lacks the guest's writes kept in the top.
        `vouched`: not ours, the operator's word that the domain pivoted (recover --pivoted)."""
        op = self._check_current_operation(op_id)
        if index != op.done:
            raise BadInput(f"step {index} is not the step in progress (next is {op.done})")
        self._pivot_requested(op_id=op_id, index=index, disk=disk, base=base, at=at, vouched=vouched)

    @event("PivotRequested")
    def _pivot_requested(
        self, op_id: str, index: int, disk: str, base: str, at: str, vouched: bool = False
    ) -> None:
        assert self.operation is not None
        details = dict(self.operation.details)
        details["pivots"] = {**details.get("pivots", {}), str(index): {disk: base}}
        vouched_for = {*details.get("pivots_vouched", [])}
        # our own pivot, asked of libvirt, supersedes the operator's word for that step
        details["pivots_vouched"] = sorted(vouched_for | {index} if vouched else vouched_for - {index})
        self.operation = replace(self.operation, details=details)

    def record_definition(self, domain_xml: str, at: str, redefined: bool = False) -> None:
        """The libvirt domain's definition now, as an adapter read it (or built it from the
        ledger when the domain is gone): it names the images the domain runs on. Recorded when
        it changed, and always when snapledger `redefined` the domain itself (reconcile)."""
        if domain_xml != self.domain_xml or redefined:
            self._definition_recorded(domain_xml=domain_xml, at=at, redefined=redefined)

    @event("DefinitionRecorded")
    def _definition_recorded(self, domain_xml: str, at: str, redefined: bool = False) -> None:
        self.domain_xml = domain_xml

    def import_snapshots(
        self, snapshots: list[dict[str, Any]], current: str | None, at: str
    ) -> None:
        """Snapshots another tool took (libvirt's metadata), in parent-first order: each a dict
        of name, parent, disks (target -> frozen image, an image this VM holds), created,
        domain_xml and description."""
        self.check_importable(snapshots, current)
        self._snapshots_imported(snapshots=snapshots, current=current, at=at)

    @event("SnapshotsImported")
    def _snapshots_imported(
        self, snapshots: list[dict[str, Any]], current: str | None, at: str
    ) -> None:
        for snap in snapshots:
            self.snapshots[snap["name"]] = SnapshotRecord(
                snap["name"], snap["parent"], dict(snap["disks"]), snap["created"],
                snap.get("domain_xml"), snap.get("description"),
            )
        self.current = current

    def reconcile(
        self,
        observed: list[ImageFacts],
        found: list[ImageFacts],
        gone: list[str],
        disowned: list[str],
        at: str,
    ) -> None:
        """Record the disks' reality after drift, writing no image: `observed` new facts of
        images the VM holds (a file back from missing included), `found` images that now lie in
        a chain (read-only), `gone` images no longer on disk, `disowned` managed images replaced
        by another file (now the user's: adopted, never deleted)."""
        self.check_idle()
        self.check_holds([*(f.path for f in observed), *gone, *disowned])
        self._reconciled(
            observed=[f.to_dict() for f in observed],
            found=[{**f.to_dict(), "origin": Origin.FOUND.value} for f in found],
            gone=sorted(gone),
            disowned=sorted(disowned),
            at=at,
        )

    @event("Reconciled")
    def _reconciled(
        self,
        observed: list[dict[str, Any]],
        found: list[dict[str, Any]],
        gone: list[str],
        disowned: list[str],
        at: str,
    ) -> None:
        for item in observed:
            facts = ImageFacts.from_dict(item)
            self.images[facts.path] = replace(self.images[facts.path], facts=facts, missing=False)
        for path in disowned:
            self.images[path] = replace(self.images[path], origin=Origin.ADOPTED)
        for item in found:
            record = record_from_dict(item)
            self.images[record.path] = record
        for path in gone:
            self.images[path] = replace(self.images[path], missing=True)
        self.drift_findings = []

    def retire(self, at: str) -> None:
        """End tracking: the history stays; the images are let go (nothing is deleted)."""
        self.check_idle()
        self._retired(at=at)

    @event("Retired")
    def _retired(self, at: str) -> None:
        self.retired = at

    def move_home(self, to: str, at: str, taken_over: bool, shared: tuple[str, ...]) -> None:
        """Give the VM a new home host. Only a VM whose every image lies on storage every host
        sees at the same path (`shared`) can move: another host's own files are not there.
        `taken_over`: the new host takes the VM from a dead one, on the operator's word; an
        operation the dead host left open stays, for `recover` on the new home. Otherwise the
        VM must be idle (its home finishes what it started first)."""
        self.check_movable(to, taken_over, shared)
        self._home_moved(to=to, previous=self.home, taken_over=taken_over, at=at)

    @event("HomeMoved")
    def _home_moved(self, to: str, previous: str, taken_over: bool, at: str) -> None:
        self.home = to
        if taken_over:
            self.taken_over_from = (*self.taken_over_from, previous)

    def record_drift(self, findings: list[str], at: str) -> None:
        self._drift_detected(findings=findings, at=at)

    @event("DriftDetected")
    def _drift_detected(self, findings: list[str], at: str) -> None:
        self.drift_findings = list(findings)

    def record_refusal(self, kind: str, target: str | None, why: str, at: str) -> None:
        """An attempt refused because it would lose data or the disks disagree (exit 3): the
        trail keeps attempts too (semantics.md). Changes nothing else."""
        self._operation_refused(kind=kind, target=target, why=why, at=at)

    @event("OperationRefused")
    def _operation_refused(self, kind: str, target: str | None, why: str, at: str) -> None:
        pass


__all__ = [
    "LEDGER_NAMESPACE",
    "OperationRecord",
    "SnapshotRecord",
    "VirtualMachine",
    "check_name",
    "image_record_to_dict",
    "vm_id",
]
