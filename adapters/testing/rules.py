"""The conformance machine's rules beyond snapshot, revert and delete (machine.py): swap, gc,
prune, an operation cut short then recovered, what the port says it can't do, and adoptions
that must be refused. A mixin, so that machine.py stays one screenful of concerns."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import snapledger.testing.needs  # noqa: F401  (first: a clear error without hypothesis)

# isort: split
from hypothesis import assume, event, note
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, precondition, rule

from snapledger.domain.errors import (
    ImageInUse,
    LedgerUnwritable,
    Refused,
    StorageError,
    ToolMissing,
)
from snapledger.domain.images import OwnerClass
from snapledger.domain.steps import Plan
from snapledger.projections.dag import ImageDag
from snapledger.projections.retention import KeepRules
from snapledger.testing import checks
from snapledger.testing.faults import FaultyPort, SimulatedCrash
from snapledger.testing.model import ByteModel, ByteStorage, Content, SnapRef

if TYPE_CHECKING:
    from snapledger.adapters.service.commands import Snapledger

contents = st.dictionaries(st.integers(0, 11), st.integers(1, 255), max_size=6)
REFUSALS = ("DriftFound", "ToolMissing", "Refused", "BranchPointRefused", "StrategyNotAllowed",
            "OperationInProgress")


class OperationRules:
    """Rules for ConformanceMachine (which provides the ledger, the storage and the model)."""

    vms = Bundle("vms")
    snapshots = Bundle("snapshots")
    ledger: Snapledger
    storage: ByteStorage
    port: FaultyPort
    model: ByteModel
    names: Any
    app: Any
    root: str

    if TYPE_CHECKING:
        @property
        def size(self) -> int: ...

        def world(self) -> tuple[int, dict[str, tuple[object, ...]]]: ...
        def files_state(self) -> dict[str, tuple[object, ...]]: ...
        def fresh(self) -> Snapledger: ...
        def idle(self, vm: str) -> bool: ...
        def every_directory(self) -> list[str]: ...
        def _expect_snapshot(self, vm: str, name: str, exclude: frozenset[str]) -> SnapRef: ...
        def inject(self, *, crash_at: int | None = None, fail_at: int | None = None,
                   busy_at: int | None = None, after: bool = False) -> None: ...
        def refused_and_nothing_changed(
            self, command: Callable[[], object], accepted: str, refusal: type[Exception] = Refused
        ) -> None: ...

    def snapshots_where(self, wanted: str) -> list[SnapRef]:
        """Model snapshots whose frozen image is a managed image with 1 (`middle`) or 2+ children
        (and, for a branch point, no file of a user's resting on it: that makes it stay)."""
        dependants = {
            path: files for name in self.ledger.view.live_vms()
            for path, files in (self.ledger.unknown_dependants(name) or {}).items()
        }
        dag = ImageDag(self.ledger.view, dependants=dependants)
        found = []
        for ref in sorted(self.model.taken):
            vm = self.ledger.view.vms[ref.vm]
            if vm.operation is not None:
                continue
            for path in vm.snapshots[ref.name].disks.values():
                kids = dag.needed_children(path)
                managed = dag.nodes[path].owner is OwnerClass.MANAGED
                # A detached child makes any delete metadata only (semantics.md), so skip those.
                attached = not any(dag.nodes[k].detached for k in kids)
                attached = attached and not dag.dependants(path)
                if (wanted == "middle" and len(kids) == 1) or (
                    wanted == "branch point" and managed and attached and len(kids) > 1
                ):
                    found.append(ref)
                    break
        return found

    @rule(vm=vms, content=contents, data=st.data())
    def swap_disk(self, vm: str, content: Content, data: st.DataObject) -> None:
        """The user puts their own file in place: standalone, or an overlay they made over one
        of the VM's snapshots (a user's file backed by a managed image)."""
        assume(self.idle(vm))
        path = f"{self.root}/vms/{vm}/swapped{next(self.names)}.qcow2"
        bases = [r for r in self.model.snapshots_of(vm) if "vda" in self.model.taken[r]]
        base = data.draw(st.none() | st.sampled_from(bases)) if bases else None
        below: Content = {}
        backing = None
        if base is not None:
            backing = self.ledger.view.vms[vm].snapshots[base.name].disks["vda"]
            below = self.model.taken[base]["vda"]
        self.storage.make_image(path, self.size, content, backing=backing)
        self.model.user_file(path, content)
        self.ledger.swap_disk(vm, "vda", path)
        self.model.disk(vm, "vda", {**below, **content})

    @rule(vm=vms, include_detached=st.booleans())
    def gc(self, vm: str, include_detached: bool) -> None:
        assume(self.idle(vm))
        self.ledger.gc(vm, include_detached)
        checks.nothing_unreachable(self.ledger, self.storage, self.model, vm, include_detached)

    @rule(vm=vms, last=st.integers(1, 3), branches=st.sampled_from(["forbid", "pull", "keep"]),
          crash_at=st.none() | st.integers(1, 6), after=st.booleans())
    def prune(self, vm: str, last: int, branches: str, crash_at: int | None, after: bool) -> None:
        """Keep the newest `last` snapshots; each deletion an ordinary delete. Cut short, the
        deletions before are done and recover finishes the one under way."""
        assume(self.idle(vm))
        before = self.world()
        self.inject(crash_at=crash_at, after=after)
        deleted: set[str] | None = None
        try:
            pruned = self.ledger.prune(vm, KeepRules(last=last), branches)
            deleted = {step.snapshot for step in pruned.deleted}
        except SimulatedCrash:
            self.inject()
            event("crash recovered: prune")
            self.fresh().recover(vm)
        except Refused as refusal:
            note(f"prune refused: {refusal}")
            if checks.changes(self.app) == before[0]:
                assert self.world() == before, "a refused prune changed something"
        finally:
            self.inject()
        recorded = set(self.ledger.view.vms[vm].snapshots)
        for ref in self.model.snapshots_of(vm):
            if ref.name not in recorded:  # deleted: nothing else may read differently
                self.model.delete(ref)
        if deleted is not None:
            assert not deleted & recorded, "prune says it deleted a snapshot still recorded"
            event(f"prune deleted {len(deleted)}")

    @rule(snap=snapshots, operation=st.sampled_from(["snapshot", "revert", "delete", "gc"]),
          at_call=st.integers(1, 6), how=st.sampled_from(["crash", "crash after", "fail", "busy"]))
    def interrupted_operation_then_recover(
        self, snap: SnapRef, operation: str, at_call: int, how: str
    ) -> None:
        """Crash (the process dies, before or after a storage call), fail (an error) or find an
        image locked by another process at a storage call, then `recover`."""
        assume(snap in self.model.taken and self.idle(snap.vm))
        vm = snap.vm
        kind = how.split()[0]
        self.inject(**{f"{kind}_at": at_call}, after=how == "crash after")
        files_before = self.files_state()
        name = f"s{next(self.names)}"
        expect = None
        try:
            try:
                if operation == "snapshot":
                    self.ledger.snapshot(vm, name)
                elif operation == "revert":
                    self.ledger.revert(vm, snap.name)
                elif operation == "delete":
                    self.ledger.delete(vm, snap.name, "auto", "keep")
                else:
                    self.ledger.gc(vm)
                expect = operation
            except SimulatedCrash:
                note(f"crashed ({how}) in {operation} at storage call {at_call}")
                event(f"crash recovered: {operation}")
                self.inject()
                self.fresh().recover()
                expect = operation
            except ImageInUse as busy:
                note(f"image in use in {operation} at storage call {at_call}: {busy}")
                assert busy.exit_code == 4
                op = self.ledger.view.vms[vm].operation
                if op is None:  # nothing destructive had happened: rolled back, nothing changed
                    event(f"image in use, rolled back: {operation}")
                    assert self.files_state() == files_before
                else:  # nothing recorded as failed: recover finishes it
                    event(f"image in use, recovered: {operation}")
                    assert op.failure is None
                    self.inject()
                    self.ledger.recover(vm)
                    expect = operation
            except StorageError as error:
                note(f"failed in {operation} at storage call {at_call}: {error}")
                if self.ledger.view.vms[vm].operation is not None:  # past a destructive step
                    self.inject()
                    self.ledger.recover(vm)
                    expect = operation
        finally:
            self.inject()
        if expect == "snapshot":
            self._expect_snapshot(vm, name, frozenset())
        elif expect == "revert":
            self.model.revert(snap)
        elif expect == "delete":
            self.model.delete(snap)
        assert self.idle(vm)

    @precondition(lambda self: self.ledger.view.live_vms())
    @rule(data=st.data(), trouble=st.sampled_from(["held for writing", "held for reading", "tool missing"]))
    def the_port_says_it_cant(self, data: st.DataObject, trouble: str) -> None:
        """Another process holds one of a VM's files, or the storage's tool is missing, for the
        length of one operation: what it would write or delete is refused and changes nothing;
        what it does not touch goes ahead; a merge stopped by a lock is finished by recover."""
        vms = sorted(n for n, v in self.ledger.view.live_vms().items() if v.operation is None)
        if not vms:
            return
        vm = data.draw(st.sampled_from(vms))
        attempt, expect = self.an_operation(data, vm)
        target = data.draw(st.sampled_from(sorted(p for p in self.ledger.view.vms[vm].images
                                                  if self.storage.exists(p))))
        # a ledger position, not a count of changes: refusals recorded earlier are events too
        before = self.app.recorder.max_notification_id() or 0
        files_before = self.files_state()
        if trouble == "tool missing":
            self.port.tool_missing = True
        else:
            self.port.hold(target, writing=trouble == "held for writing")
        outcome = "done"
        try:
            attempt()
        except (Refused, ToolMissing, ImageInUse, LedgerUnwritable) as error:
            outcome = type(error).__name__
            note(f"{trouble} on {target}: {error}")
        finally:
            self.port.tool_missing = False
            self.port.release(target)
        event(f"port: {trouble}: {outcome}")
        if trouble != "tool missing":
            assert self.storage.exists(target), f"{target} ({trouble}) was deleted"
            assert self.files_state()[target] == files_before[target], f"{target} ({trouble}) was written"
        open_op = self.fresh().view.vms[vm].operation
        if outcome in REFUSALS:
            assert open_op is None, f"a refusal ({outcome}) left an operation open"
            assert self.files_state() == files_before, f"a refusal ({outcome}) changed a file"
            return
        if open_op is not None:
            assert outcome == "ImageInUse" and open_op.failure is None, outcome
            self.ledger.recover(vm)
        if outcome == "done" or closed_since(self.app, self.ledger, before, vm):
            expect()

    def an_operation(self, data: st.DataObject, vm: str) -> tuple[Callable[[], object], Callable[[], None]]:
        """One operation on `vm`, and what the model learns if it is done."""
        refs = self.model.snapshots_of(vm)
        kinds = ["snapshot", "gc"] + (["revert", "delete"] if refs else [])
        kind = data.draw(st.sampled_from(kinds))
        if kind == "snapshot":
            name = f"s{next(self.names)}"

            def taken() -> None:
                self._expect_snapshot(vm, name, frozenset())

            return (lambda: self.ledger.snapshot(vm, name)), taken
        if kind == "gc":
            detached = data.draw(st.booleans())
            return (lambda: self.ledger.gc(vm, detached)), lambda: None
        snap = data.draw(st.sampled_from(refs))
        if kind == "revert":
            return (lambda: self.ledger.revert(vm, snap.name)), lambda: self.model.revert(snap)
        branches = data.draw(st.sampled_from(["forbid", "pull", "keep"]))
        return (lambda: self.ledger.delete(vm, snap.name, "auto", branches)), lambda: self.model.delete(snap)

    # ---- what must be refused ----------------------------------------------------------------

    @rule(vm=vms, data=st.data())
    def adopt_disk_of_another_vm_is_refused(self, vm: str, data: st.DataObject) -> None:
        other = f"vm{next(self.names)}"
        path = data.draw(st.sampled_from(sorted(set(self.ledger.view.vms[vm].disks.values()))))
        self.refused_and_nothing_changed(
            lambda: self.ledger.adopt(other, {"vda": path}, pools=self.every_directory()),
            "a disk active in another VM was adopted",
        )

    @precondition(lambda self: len(self.ledger.view.vms) < 4 and self.model.taken)
    @rule(target=vms, data=st.data(), content=contents)
    def adopt_over_a_snapshot_of_another_vm(self, data: st.DataObject, content: Content) -> str:
        """A user builds a new VM's disk on another VM's snapshot: that image becomes read-only."""
        snap = data.draw(st.sampled_from(sorted(self.model.taken)))
        disk = data.draw(st.sampled_from(sorted(self.model.taken[snap])))
        frozen = self.ledger.view.vms[snap.vm].snapshots[snap.name].disks[disk]
        vm = f"vm{next(self.names)}"
        path = f"{self.root}/vms/{vm}/vda.qcow2"
        self.storage.make_image(path, self.size, content, backing=frozen)
        self.model.user_file(path, content)
        self.ledger.adopt(vm, {"vda": path}, pools=self.every_directory())
        self.model.disk(vm, "vda", {**self.model.taken[snap][disk], **content})
        return vm

    @rule(vm=vms, data=st.data())
    def disk_over_an_active_image_is_refused(self, vm: str, data: st.DataObject) -> None:
        active = data.draw(st.sampled_from(sorted(set(self.ledger.view.vms[vm].disks.values()))))
        other = f"vm{next(self.names)}"
        path = f"{self.root}/vms/{other}/vda.qcow2"
        self.storage.make_image(path, self.size, {}, backing=active)
        self.refused_and_nothing_changed(
            lambda: self.ledger.adopt(other, {"vda": path}, pools=self.every_directory()),
            "a disk backed by another VM's active image was adopted",
        )
        self.storage.delete(path)
        assert not self.storage.exists(path), f"the storage adapter's delete({path!r}) left the file"


def closed_since(app: Any, ledger: Snapledger, before: int, vm: str) -> bool:
    """Whether an operation of `vm` closed after ledger position `before` (it was done, in the
    end). A position, as `app.recorder.max_notification_id()` gives it: not `checks.changes`,
    which leaves recorded refusals out."""
    closers = {"SnapshotTaken", "Reverted", "SnapshotDeleted", "ImagesDiscarded"}
    vm_id = ledger.view.vms[vm].id
    return any(ev.originator_id == vm_id and type(ev).__name__ in closers
               for ev, _ in app.events_after(before))


def describe(plan: Plan) -> str:
    """What kind of merge a delete plan is, for hypothesis' statistics."""
    actions = [step.action for step in plan.steps]
    pulls = actions.count("pull")
    if "commit" in actions:
        return "commit"
    if pulls > 1 or (pulls == 1 and len(plan.steps) > 2):
        return "pull into branches"
    if pulls:
        return "pull"
    if "delete-file" in actions:
        return "drop unneeded image"
    if "release-image" in actions:
        return "release unowned image"
    return "metadata only"
