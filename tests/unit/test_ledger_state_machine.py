"""The proof: random histories against the real application and an independent byte model.

The machine drives snapledger (commands -> planner -> executor on simulated storage) and, side by
side, a model that only knows bytes: what each VM's present reads and what each snapshot read when
it was taken. After every step the disk must agree with the model, whatever snapledger believes.
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Callable
from dataclasses import dataclass

from dag_reference import eager_dag, lazy_dag
from hypothesis import assume, event, note
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)
from machine_world import FillableLedger, WorldActors
from projection_helpers import rebuilt, view_state
from recorded import changes, last_type

from snapledger.adapters.checkpoint.audit import projection_findings
from snapledger.adapters.checkpoint.memory import MemoryProjectionStore
from snapledger.adapters.checkpoint.persisted import PersistedProjection
from snapledger.adapters.compose import ledger_service
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.service.drift import DiskChecks
from snapledger.adapters.storage.simulated import CLUSTER, SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import (
    BadPath,
    BranchPointRefused,
    DriftFound,
    DuplicateName,
    ImageInUse,
    Refused,
    StorageError,
    StrategyNotAllowed,
)
from snapledger.domain.images import OwnerClass
from snapledger.domain.steps import Plan
from snapledger.projections.dag import ImageDag
from snapledger.projections.dag_index import VmImageIndex, kept_index
from snapledger.projections.documents import json_text, vm_document
from snapledger.projections.view import LedgerView, private_copy

CLUSTERS = 12
SIZE = CLUSTERS * CLUSTER
TEMPLATE = "/templates/template.qcow2"
CHECKPOINT_EVERY = 5  # archive points of the persisted projection, in ledger positions
ELSEWHERE = "/elsewhere/stray.qcow2"  # in no VM's directories

Content = dict[int, int]
contents = st.dictionaries(st.integers(0, CLUSTERS - 1), st.integers(1, 255), max_size=6)


@dataclass(frozen=True)
class SnapRef:
    vm: str
    name: str


class LedgerMachine(WorldActors, RuleBasedStateMachine):
    vms = Bundle("vms")
    snapshots = Bundle("snapshots")

    def __init__(self) -> None:
        super().__init__()
        self.storage = SimulatedStorage()
        self.app = FillableLedger("memory:")
        ticks = itertools.count()
        self.clock = lambda: f"2026-01-01T00:00:00.{next(ticks):06d}+00:00"
        self.ledger = ledger_service(self.app, self.storage, clock=self.clock, projection=self.projection())
        self.names = itertools.count(1)
        # The byte model.
        self.present: dict[tuple[str, str], Content] = {}
        self.taken: dict[SnapRef, dict[str, Content]] = {}
        # Files the user made: never deleted; `frozen_files` are never changed either.
        self.user_files: set[str] = set()
        self.frozen_files: dict[str, Content] = {}
        self.init_world()

    @initialize()
    def make_template(self) -> None:
        content = {c: 0x70 + c for c in range(0, CLUSTERS, 3)}
        self.storage.make_image(TEMPLATE, SIZE, content)
        self.user_files.add(TEMPLATE)
        self.frozen_files[TEMPLATE] = dict(content)
        self.storage.make_image(ELSEWHERE, SIZE, {0: 0xEE})
        self.user_files.add(ELSEWHERE)
        self.frozen_files[ELSEWHERE] = {0: 0xEE}

    # ---- helpers -------------------------------------------------------------------------

    def projection(self) -> PersistedProjection:
        """A process's persisted projection, with archive points every few positions."""
        return PersistedProjection(self.app, every=CHECKPOINT_EVERY)

    def fresh(self) -> Snapledger:
        """A new process on the same store: a fresh view rebuilt from the events."""
        self.ledger = ledger_service(self.app, self.storage, clock=self.clock, projection=self.projection())
        return self.ledger

    def world(self) -> tuple[int, dict[str, tuple[object, ...]]]:
        files = {
            path: (img.backing, img.backing_format, tuple(sorted(img.clusters.items())))
            for path, img in self.storage.files.items()
        }
        return changes(self.app), files

    def deleting(
        self, snap: SnapRef, strategy: str, branches: str, crash_at: int | None,
        busy_at: int | None = None,
    ) -> Plan:
        """Delete, maybe dying at the `crash_at`-th storage call (a new process then recovers),
        or finding the image held by another process at the `busy_at`-th merge (exit 4, nothing
        recorded as failed; once the holder is gone, recover or a retry finishes the job)."""
        self.storage.inject(crash_at=crash_at, busy_at=busy_at)
        files = self.world()[1]
        try:
            return self.ledger.delete(snap.vm, snap.name, strategy, branches)
        except SimulatedCrash:
            self.storage.inject()
            event("crash recovered: delete")
            plan = self.fresh().view.vms[snap.vm].operation
            assert plan is not None
            self.ledger.recover(snap.vm)
            return Plan("delete", plan.steps)
        except ImageInUse as busy:
            self.storage.inject()
            assert busy.exit_code == 4
            op = self.ledger.view.vms[snap.vm].operation
            if op is None:  # nothing had been destroyed: rolled back, nothing changed
                event("image in use, rolled back: delete")
                assert self.world()[1] == files, "a delete rolled back for a held image changed files"
                return self.ledger.delete(snap.vm, snap.name, strategy, branches)
            event("image in use, recovered: delete")
            assert op.failure is None, "a held image was recorded as a failure"
            self.ledger.recover(snap.vm)
            return Plan("delete", op.steps)
        finally:
            self.storage.inject()

    def refused_and_nothing_changed(
        self, command: Callable[[], object], accepted: str, refusal: type[Exception] = Refused
    ) -> None:
        before = self.world()
        try:
            command()
        except refusal:
            pass
        else:
            raise AssertionError(accepted)
        assert self.world() == before, "a refused command changed something"

    def active(self, vm: str, disk: str) -> str:
        return self.ledger.view.vms[vm].disks[disk]

    def idle(self, vm: str) -> bool:
        return self.ledger.view.vms[vm].operation is None

    # ---- rules ---------------------------------------------------------------------------

    @precondition(lambda self: len(self.ledger.view.vms) < 3)
    @rule(target=vms, own=st.lists(contents, min_size=1, max_size=2), on_template=st.booleans(),
          raw=st.booleans())
    def adopt(self, own: list[Content], on_template: bool, raw: bool) -> str:
        """A VM over its own qcow2 disks, the first maybe over a template, or raw."""
        vm = f"vm{next(self.names)}"
        disks = {}
        raw = raw and not on_template
        for i, content in enumerate(own):
            disk = "vda" if i == 0 else "vdb"
            fmt = "raw" if raw and i == 0 else "qcow2"
            path = f"/vms/{vm}/{disk}.{'img' if fmt == 'raw' else 'qcow2'}"
            backing = TEMPLATE if on_template and i == 0 else None
            self.storage.make_image(path, SIZE, content, backing=backing, fmt=fmt)
            self.user_files.add(path)
            disks[disk] = path
            below = self.frozen_files[TEMPLATE] if backing else {}
            self.present[(vm, disk)] = {**below, **content}
        self.ledger.adopt(vm, disks, pools=["/templates"] if on_template else [])
        return vm

    def every_directory(self) -> list[str]:
        return sorted({posixpath.dirname(p) for p in self.storage.files} - {"/elsewhere"})

    @rule()
    def another_process_carries_on(self) -> None:
        """The next commands run in a new process: its view is the checkpoint's live rows, and
        it looks up the rest when it needs them."""
        self.fresh()

    @rule(through_a_symlink=st.booleans())
    def adopt_over_a_template_outside_is_refused(self, through_a_symlink: bool) -> None:
        """A disk whose chain leaves the VM's directories (its disks' and its pools) is refused,
        also when a symlinked directory inside leads out; nothing is recorded."""
        vm = f"vm{next(self.names)}"
        path = f"/vms/{vm}/vda.qcow2"
        backing = TEMPLATE
        if through_a_symlink:
            self.storage.symlink(f"/vms/{vm}/templates", "/templates")
            backing = f"/vms/{vm}/templates/template.qcow2"
        self.storage.make_image(path, SIZE, {}, backing=TEMPLATE)
        self.storage.files[path].backing = backing
        self.refused_and_nothing_changed(
            lambda: self.ledger.adopt(vm, {"vda": path}), "a chain leaving the VM's directories "
            "was adopted", BadPath,
        )
        self.storage.delete(path)
        self.storage.links.clear()

    @rule(vm=vms, data=st.data())
    def a_backing_rewritten_to_point_outside_is_found_and_refused(
        self, vm: str, data: st.DataObject
    ) -> None:
        """Someone points an active image at a file outside the VM's directories: verify says
        so, every operation is refused, and the file is never opened."""
        assume(self.idle(vm))
        active = data.draw(st.sampled_from(sorted(set(self.ledger.view.vms[vm].disks.values()))))
        image = self.storage.files[active]
        was = image.backing, image.backing_format
        image.backing, image.backing_format = ELSEWHERE, "qcow2"
        try:
            assert any(
                "outside the VM's allowed directories" in f for f in self.ledger.verify(vm)
            )
            self.refused_and_nothing_changed(
                lambda: self.ledger.snapshot(vm, f"s{next(self.names)}", dry_run=True),
                "a snapshot over a chain leaving the VM's directories was planned", DriftFound,
            )
        finally:
            image.backing, image.backing_format = was

    @rule(vm=vms, data=st.data())
    def guest_writes(self, vm: str, data: st.DataObject) -> None:
        assume(self.idle(vm))
        disk = data.draw(st.sampled_from(sorted(self.ledger.view.vms[vm].disks)))
        writes = data.draw(contents)
        for cluster, pattern in writes.items():
            self.storage.write(self.active(vm, disk), cluster, pattern)
        self.present[(vm, disk)].update(writes)
        self.guest_wrote(self.active(vm, disk), writes)

    def _expect_snapshot(self, vm: str, name: str, exclude: frozenset[str]) -> SnapRef:
        ref = SnapRef(vm, name)
        disks = self.ledger.view.vms[vm].disks
        self.taken[ref] = {d: dict(self.present[(vm, d)]) for d in disks if d not in exclude}
        return ref

    @rule(target=snapshots, vm=vms, exclude_second=st.booleans())
    def snapshot(self, vm: str, exclude_second: bool) -> SnapRef:
        assume(self.idle(vm))
        name = f"s{next(self.names)}"
        exclude = frozenset({"vdb"} & set(self.ledger.view.vms[vm].disks)) if exclude_second else frozenset()
        self.ledger.snapshot(vm, name, exclude=exclude)
        return self._expect_snapshot(vm, name, exclude)

    @rule(snap=snapshots)
    def duplicate_snapshot_name_is_refused(self, snap: SnapRef) -> None:
        assume(snap in self.taken and self.idle(snap.vm))
        before = self.world()
        try:
            self.ledger.snapshot(snap.vm, snap.name)
        except DuplicateName:
            pass
        else:
            raise AssertionError("a duplicate snapshot name was accepted")
        assert self.world() == before

    def _expect_revert(self, snap: SnapRef) -> None:
        for disk, content in self.taken[snap].items():
            self.present[(snap.vm, disk)] = dict(content)

    @rule(snap=snapshots)
    def revert(self, snap: SnapRef) -> None:
        assume(snap in self.taken and self.idle(snap.vm))
        self.ledger.revert(snap.vm, snap.name)
        self._expect_revert(snap)

    def snapshots_where(self, wanted: str) -> list[SnapRef]:
        """Model snapshots whose frozen image is a managed image with 1 (`middle`) or 2+ children
        (and, for a branch point, no file of a user's resting on it: that makes it stay)."""
        dependants = {
            path: files for name in self.ledger.view.live_vms()
            for path, files in self.ledger.unknown_dependants(name).items()
        }
        dag = ImageDag(self.ledger.view, dependants=dependants)
        found = []
        for ref in sorted(self.taken, key=lambda r: (r.vm, r.name)):
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

    @rule(target=snapshots, vm=vms, writes=st.lists(contents, min_size=3, max_size=3))
    def branch_out(self, vm: str, writes: list[Content]) -> object:
        """Three snapshots with writes between them, then back to the middle one: the middle
        snapshot's image (a managed overlay) becomes a branch point with two histories."""
        assume(self.idle(vm))
        refs = []
        for content in writes:
            refs.append(self.snapshot(vm, exclude_second=False))
            for disk in sorted(self.ledger.view.vms[vm].disks):
                for cluster, pattern in content.items():
                    self.storage.write(self.active(vm, disk), cluster, pattern)
                self.present[(vm, disk)].update(content)
                self.guest_wrote(self.active(vm, disk), content)
        self.ledger.revert(vm, refs[1].name)
        self._expect_revert(refs[1])
        return multiple(*refs)

    @precondition(lambda self: self.snapshots_where("middle"))
    @rule(data=st.data())
    def revert_to_a_middle_snapshot(self, data: st.DataObject) -> None:
        """Reverting to a snapshot with a child snapshot starts an alternate history."""
        snap = data.draw(st.sampled_from(self.snapshots_where("middle")))
        self.ledger.revert(snap.vm, snap.name)
        self._expect_revert(snap)

    @precondition(lambda self: self.snapshots_where("branch point"))
    @rule(
        data=st.data(),
        branches=st.sampled_from(["forbid", "pull", "keep"]),
        crash_at=st.none() | st.integers(1, 4),
        busy_at=st.none() | st.integers(1, 3),
    )
    def delete_a_branch_point(
        self, data: st.DataObject, branches: str, crash_at: int | None, busy_at: int | None
    ) -> None:
        snap = data.draw(st.sampled_from(self.snapshots_where("branch point")))
        before = self.world()
        try:
            plan = self.deleting(snap, "auto", branches, crash_at, busy_at)
        except BranchPointRefused:
            assert branches == "forbid"
            assert self.world() == before, "a refused delete changed something"
            assert last_type(self.app) == "OperationRefused", "the attempt is not in the trail"
            return
        except StrategyNotAllowed as refusal:  # a branch is a user's file: never written
            assert branches == "pull" and "not managed" in str(refusal)
            assert self.world() == before, "a refused delete changed something"
            return
        assert branches != "forbid", "a managed branch point was deleted without --branches"
        event(f"branch point delete: {describe(plan)}")
        del self.taken[snap]

    @rule(vm=vms, content=contents, data=st.data())
    def swap_disk(self, vm: str, content: Content, data: st.DataObject) -> None:
        """The user puts their own file in place: standalone, or an overlay they made over one
        of the VM's snapshots (a user's file backed by a managed image)."""
        assume(self.idle(vm))
        path = f"/vms/{vm}/swapped{next(self.names)}.qcow2"
        bases = sorted(
            (ref for ref in self.taken if ref.vm == vm and "vda" in self.taken[ref]),
            key=lambda r: r.name,
        )
        base = data.draw(st.none() | st.sampled_from(bases)) if bases else None
        below: Content = {}
        backing = None
        if base is not None:
            backing = self.ledger.view.vms[vm].snapshots[base.name].disks["vda"]
            below = self.taken[base]["vda"]
        self.storage.make_image(path, SIZE, content, backing=backing)
        self.user_files.add(path)
        self.ledger.swap_disk(vm, "vda", path)
        self.present[(vm, "vda")] = {**below, **content}

    @rule(
        target=snapshots,
        snap=consumes(snapshots),
        strategy=st.sampled_from(["auto", "auto", "commit", "pull"]),
        branches=st.sampled_from(["forbid", "pull", "keep"]),
        crash_at=st.none() | st.integers(1, 4),
        busy_at=st.none() | st.integers(1, 3),
    )
    def delete(
        self, snap: SnapRef, strategy: str, branches: str, crash_at: int | None,
        busy_at: int | None,
    ) -> object:
        if snap not in self.taken:
            return multiple()
        assume(self.idle(snap.vm))
        before = self.world()
        written = self.storage.bytes_written
        try:
            plan = self.deleting(snap, strategy, branches, crash_at, busy_at)
        except (BranchPointRefused, StrategyNotAllowed) as refusal:
            note(f"refused: {refusal}")
            event(f"delete refused: {type(refusal).__name__}")
            assert self.world() == before, "a refused delete changed something"
            assert strategy != "auto" or branches != "keep", "auto + keep must never refuse"
            if isinstance(refusal, BranchPointRefused):
                assert branches == "forbid"
            return snap
        if crash_at is None:
            assert self.storage.bytes_written - written <= plan.bytes_moved
        event(f"delete: {describe(plan)}")
        del self.taken[snap]
        return multiple()

    @rule(vm=vms, include_detached=st.booleans())
    def gc(self, vm: str, include_detached: bool) -> None:
        assume(self.idle(vm))
        self.ledger.gc(vm, include_detached)
        self.check_nothing_unreachable(vm, include_detached)

    @rule(
        snap=snapshots,
        operation=st.sampled_from(["snapshot", "revert", "delete", "gc"]),
        at_call=st.integers(1, 6),
        how=st.sampled_from(["crash", "fail", "busy"]),
    )
    def interrupted_operation_then_recover(
        self, snap: SnapRef, operation: str, at_call: int, how: str
    ) -> None:
        """Crash (the process dies), fail (an error) or find an image locked by another process
        at a storage call, then `recover`."""
        assume(snap in self.taken and self.idle(snap.vm))
        vm = snap.vm
        self.storage.inject(**{f"{how}_at": at_call})
        files_before = self.world()[1]
        name = f"s{next(self.names)}"
        expect = None
        try:
            try:
                if operation == "snapshot":
                    self.ledger.snapshot(vm, name)
                    expect = "snapshot"
                elif operation == "revert":
                    self.ledger.revert(vm, snap.name)
                    expect = "revert"
                elif operation == "delete":
                    self.ledger.delete(vm, snap.name, "auto", "keep")
                    expect = "delete"
                else:
                    self.ledger.gc(vm)
            except SimulatedCrash:
                note(f"crashed in {operation} at storage call {at_call}")
                event(f"crash recovered: {operation}")
                self.fresh().recover()
                expect = operation
            except ImageInUse as busy:
                note(f"image in use in {operation} at storage call {at_call}: {busy}")
                assert busy.exit_code == 4
                op = self.ledger.view.vms[vm].operation
                if op is None:  # nothing destructive had happened: rolled back, nothing changed
                    event(f"image in use, rolled back: {operation}")
                    assert self.world()[1] == files_before
                else:  # nothing recorded as failed: recover finishes it
                    event(f"image in use, recovered: {operation}")
                    assert op.failure is None
                    self.storage.inject()
                    self.ledger.recover(vm)
                    expect = operation
            except StorageError as error:
                note(f"failed in {operation} at storage call {at_call}: {error}")
                op = self.ledger.view.vms[vm].operation
                if op is not None:  # past a destructive step: finish it
                    self.ledger.recover(vm)
                    expect = operation
        finally:
            self.storage.inject()
        if expect == "snapshot":
            self._expect_snapshot(vm, name, frozenset())
        elif expect == "revert":
            self._expect_revert(snap)
        elif expect == "delete":
            del self.taken[snap]
        assert self.idle(vm)

    @rule(vm=vms, data=st.data())
    def adopt_disk_of_another_vm_is_refused(self, vm: str, data: st.DataObject) -> None:
        other = f"vm{next(self.names)}"
        path = data.draw(st.sampled_from(sorted(set(self.ledger.view.vms[vm].disks.values()))))
        self.refused_and_nothing_changed(
            lambda: self.ledger.adopt(other, {"vda": path}, pools=self.every_directory()),
            "a disk active in another VM was adopted",
        )

    @precondition(lambda self: len(self.ledger.view.vms) < 4 and self.taken)
    @rule(target=vms, data=st.data(), content=contents)
    def adopt_over_a_snapshot_of_another_vm(self, data: st.DataObject, content: Content) -> str:
        """A user builds a new VM's disk on another VM's snapshot: that image becomes read-only."""
        snap = data.draw(st.sampled_from(sorted(self.taken, key=lambda r: (r.vm, r.name))))
        disk = data.draw(st.sampled_from(sorted(self.taken[snap])))
        frozen = self.ledger.view.vms[snap.vm].snapshots[snap.name].disks[disk]
        vm = f"vm{next(self.names)}"
        path = f"/vms/{vm}/vda.qcow2"
        self.storage.make_image(path, SIZE, content, backing=frozen)
        self.user_files.add(path)
        self.ledger.adopt(vm, {"vda": path}, pools=self.every_directory())
        self.present[(vm, "vda")] = {**self.taken[snap][disk], **content}
        return vm

    @rule(vm=vms, data=st.data())
    def disk_over_an_active_image_is_refused(self, vm: str, data: st.DataObject) -> None:
        active = data.draw(st.sampled_from(sorted(set(self.ledger.view.vms[vm].disks.values()))))
        other = f"vm{next(self.names)}"
        path = f"/vms/{other}/vda.qcow2"
        self.storage.make_image(path, SIZE, {}, backing=active)
        self.refused_and_nothing_changed(
            lambda: self.ledger.adopt(other, {"vda": path}, pools=self.every_directory()),
            "a disk backed by another VM's active image was adopted",
        )
        self.storage.delete(path)

    # ---- invariants ----------------------------------------------------------------------

    @invariant()
    def every_snapshot_reads_what_it_read_when_taken(self) -> None:
        for ref, disks in self.taken.items():
            record = self.ledger.view.vms[ref.vm].snapshots[ref.name]
            assert set(record.disks) == set(disks)
            for disk, content in disks.items():
                got = self.storage.read_all(record.disks[disk])
                assert got == content, f"snapshot {ref} {disk}: {got} != {content}"

    @invariant()
    def every_present_reads_what_the_model_expects(self) -> None:
        for (vm, disk), content in self.present.items():
            got = self.storage.read_all(self.active(vm, disk))
            assert got == content, f"present {vm}/{disk}: {got} != {content}"

    @invariant()
    def user_files_are_never_deleted_and_templates_never_change(self) -> None:
        for path in self.user_files:
            assert self.storage.exists(path), f"{path} was deleted"
            self.storage.read_all(path)  # its whole chain is still there (raises if not)
        for path, content in self.frozen_files.items():
            assert self.storage.files[path].clusters == content, f"{path} was written"

    @invariant()
    def the_lazy_dag_is_the_one_built_at_once(self) -> None:
        view = self.ledger.view
        for vm in view.vms.values():
            kept = kept_index(vm)  # kept up to date as the view applied the VM's events
            if kept is not None:
                assert kept == VmImageIndex.built(vm), vm.name
        for home in [None, *sorted({vm.home for vm in view.vms.values()})]:
            for ignoring in [None, *sorted(view.live_vms())[:1]]:
                options = {"home": home, "ignore_detached_of": ignoring}
                assert lazy_dag(view, **options) == eager_dag(view, **options), options
        # asked in another order (a planner's: one image first, deepest first), the same
        whole = eager_dag(view)
        for path in sorted(whole, reverse=True)[:4]:
            one = ImageDag(view)
            assert one.needed(path) == bool(whole[path]["needs"]), path
            assert sorted(one.nodes[path].needs, key=repr) == whole[path]["needs"], path

    @invariant()
    def read_only_images_are_never_written(self) -> None:
        dag = ImageDag(self.ledger.view)
        for path, node in dag.nodes.items():
            if node.owner is OwnerClass.READ_ONLY and path in self.frozen_files:
                assert self.storage.files[path].clusters == self.frozen_files[path]

    @invariant()
    def snapledgers_own_operations_leave_no_drift(self) -> None:
        """Between rules the disks agree with the ledger for every idle VM: what snapledger
        wrote (a commit's base, a pulled or rebased image, a frozen image written until its
        disk moved away) it has read back, times included, so nothing it did looks like
        drift (and the world's doings that do were reconciled by the rule that did them)."""
        checks = DiskChecks(self.storage)  # verify's disk check, on the view's VMs (no replay)
        for name, vm in sorted(self.ledger.refresh().live_vms().items()):
            if vm.operation is None:
                assert checks.drift(vm, checks.look(vm, sorted(vm.images))) == [], name

    @invariant()
    def ledger_agrees_with_disk_on_backing(self) -> None:
        """Every image the ledger holds is on disk as recorded, and so is the file it rests on:
        no operation deletes a file that something the ledger keeps (even a leftover) rests on."""
        for vm in self.ledger.view.vms.values():
            for record in vm.images.values():
                seen = self.storage.inspect(record.path, record.facts.format)
                assert (seen.backing, seen.backing_format) == (
                    record.facts.backing,
                    record.facts.backing_format,
                ), record.path
                if record.facts.backing is not None and record.facts.backing_format is not None:
                    self.storage.inspect(record.facts.backing, record.facts.backing_format)

    @invariant()
    def rebuilt_projection_equals_incremental(self) -> None:
        rebuilt = LedgerView()
        rebuilt.apply_all(self.app.events_after(0))
        view = self.ledger.view
        assert rebuilt.canonical() == view.canonical()  # the VMs and every live registration
        for each in (rebuilt, view):  # the index kept as events apply
            assert each.in_use == {i: r for i, r in each.registrations.items() if r.users}
        # a lazy view (a process started from a checkpoint) looks up the registrations it did
        # not load, and gets what the events say
        for registration in rebuilt.registrations.values():
            found = view.registrations_of(registration.path, registration.host or None)
            assert registration in found, registration.path

    @invariant()
    def a_command_loads_each_aggregate_as_its_events_fold_it(self) -> None:
        """A command takes a private copy of the view's aggregate rather than replaying its
        stream (issue 13): the copy is exactly what the aggregate's own events fold to, and
        changing it leaves the view alone."""
        for name, vm in self.ledger.view.vms.items():
            loaded = self.ledger.vm(name)
            assert loaded == self.app.load(vm.id), name
            loaded.disks["copy-only"] = "/nowhere"
            assert "copy-only" not in vm.disks
        for registration in self.ledger.view.registrations.values():
            assert private_copy(registration) == self.app.load(registration.id), registration.path

    @invariant()
    def persisted_projection_equals_rebuilt(self) -> None:
        """What a new process starts from (the checkpoint, caught up), what time travel starts
        from (an archive point) and the stored `show` documents are the folded ledger, exactly."""
        last = self.app.recorder.max_notification_id() or 0
        whole = rebuilt(self.app)
        projection = self.projection()
        store = projection.store
        assert isinstance(store, MemoryProjectionStore)
        if store.tracking is not None and store.tracking.position == last:
            for name in whole.vms:
                assert store.doc_text(name) == json_text(vm_document(whole, name)), name
        alone = self.projection()
        alone.far = -1  # as on a long ledger with no checkpoint near its end: each VM alone
        for name in whole.vms:
            one = alone.view_of_one(name)
            assert one is not None and vm_document(one, name) == vm_document(whole, name), name
        assert view_state(projection.catch_up(projection.load())) == view_state(whole)
        assert projection_findings(projection) == []  # what verify compares agrees
        lazy = projection.catch_up(projection.load(lazy=True))  # what a new process starts from
        assert lazy.canonical() == whole.canonical()
        for registration in whole.registrations.values():  # and the rest, looked up
            assert registration in lazy.registrations_of(registration.path, registration.host or None)
        for position in {last // 2, max(last - 1, 0)}:
            assert view_state(projection.view_at(position)) == view_state(rebuilt(self.app, position))

    def check_nothing_unreachable(self, vm: str, include_detached: bool) -> None:
        dependants = self.ledger.unknown_dependants(vm)  # users' own files rest on these
        dag = ImageDag(self.ledger.view, dependants=dependants)
        without = ImageDag(self.ledger.view, ignore_detached_of=vm, dependants=dependants)
        for path in self.ledger.view.vms[vm].images:
            node = dag.nodes[path]
            assert node.needed, f"{path} is unreachable after gc"
            if include_detached and node.detached and not without.nodes[path].needed:
                # discarded, unless it is a user's file on managed images
                chain = dag.chain(path)
                assert node.owner is not OwnerClass.MANAGED, f"{path} was not discarded"
                assert any(dag.nodes[p].owner is OwnerClass.MANAGED for p in chain[1:])
        known = {p for v in self.ledger.view.vms.values() for p in v.images}
        for path in self.storage.files:
            assert path in known or path in self.user_files, f"{path} is an orphan file"


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


TestLedgerStateMachine = LedgerMachine.TestCase
