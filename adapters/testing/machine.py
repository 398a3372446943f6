"""The conformance machine: random histories against snapledger over YOUR storage adapter, checked
against the byte model (model.py) after every step, whatever snapledger believes.

Subclass it with one method, `storage_adapter`, returning a fresh adapter (the storage port and
the test's hands, model.ByteStorage) for each history, and take its TestCase:

    class TestMyStorage(ConformanceMachine):
        def storage_adapter(self) -> ByteStorage:
            return MyStorage(...)

    TestMine = TestMyStorage.TestCase

The machine adopts VMs (own disks, a template, raw), writes as guests, snapshots, reverts,
deletes with every strategy and branch option, swaps disks, collects garbage and prunes; it kills
the process before or after a storage call (recover must finish the job, re-running a step
already done harmlessly), fails a call, holds an image, hides the tool, and tries what must be
refused. See docs/testing.md.
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Callable
from typing import ClassVar

import snapledger.testing.needs  # noqa: F401  (first: a clear error without hypothesis)

# isort: split
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

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.service.ports import ViewProjection
from snapledger.domain.errors import (
    BranchPointRefused,
    DuplicateName,
    ImageInUse,
    Refused,
    StrategyNotAllowed,
)
from snapledger.domain.steps import Plan
from snapledger.testing import checks
from snapledger.testing.faults import FaultyPort, SimulatedCrash
from snapledger.testing.model import CLUSTER, ByteModel, ByteStorage, Content, SnapRef
from snapledger.testing.rules import OperationRules, describe

World = tuple[int, dict[str, tuple[object, ...]]]


class ConformanceMachine(OperationRules, RuleBasedStateMachine):
    """snapledger's invariants, checked against the storage adapter `storage_adapter` returns."""

    clusters: ClassVar[int] = 12  # each image's size, in the model's clusters
    vms = Bundle("vms")
    snapshots = Bundle("snapshots")

    def storage_adapter(self) -> ByteStorage:
        """The one method a subclass writes: a fresh, empty adapter for one history."""
        raise NotImplementedError("return your storage adapter (a ByteStorage) from storage_adapter")

    def __init__(self) -> None:
        super().__init__()
        self.storage = self.storage_adapter()
        self.port = FaultyPort(self.storage)
        self.root = self.storage.root
        self.template = f"{self.root}/templates/template.qcow2"
        self.app = self.ledger_application()
        ticks = itertools.count()
        self.clock = lambda: f"2026-01-01T00:00:00.{next(ticks):06d}+00:00"
        self.ledger = self.fresh()
        self.names = itertools.count(1)
        self.model = ByteModel()

    # ---- hooks a subclass may change ---------------------------------------------------------

    def ledger_application(self) -> LedgerApplication:
        """The event store the histories are recorded in (in memory)."""
        return LedgerApplication("memory:")

    def projection(self) -> ViewProjection | None:
        """The projection a new process starts from (None: the composition root's default)."""
        return None

    def inject(
        self, *, crash_at: int | None = None, fail_at: int | None = None,
        busy_at: int | None = None, after: bool = False,
    ) -> None:
        """Arm the faults of the next operation (no argument: none); see FaultyPort.inject."""
        self.port.inject(crash_at=crash_at, fail_at=fail_at, busy_at=busy_at, after=after)

    def files_state(self) -> dict[str, tuple[object, ...]]:
        """Every file, compared before and after what must change nothing."""
        return checks.files_state(self.storage)

    def bytes_written(self) -> int | None:
        """The bytes the adapter wrote so far, if it counts them (a delete's plan bounds them)."""
        written = getattr(self.storage, "bytes_written", None)
        return written if isinstance(written, int) else None

    # ---- helpers ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.clusters * CLUSTER

    def fresh(self) -> Snapledger:
        """A new process on the same store: a fresh view, from the projection."""
        self.ledger = ledger_service(self.app, self.port, clock=self.clock, projection=self.projection())
        return self.ledger

    def world(self) -> World:
        return checks.changes(self.app), self.files_state()

    def active(self, vm: str, disk: str) -> str:
        return self.ledger.view.vms[vm].disks[disk]

    def idle(self, vm: str) -> bool:
        return self.ledger.view.vms[vm].operation is None

    def every_directory(self) -> list[str]:
        return sorted({posixpath.dirname(p) for p in self.storage.paths()} - {f"{self.root}/elsewhere"})

    def guest_wrote(self, active: str, writes: Content) -> None:
        """Told of every guest write into `active` (a subclass may keep more models)."""

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

    def deleting(
        self, snap: SnapRef, strategy: str, branches: str, crash_at: int | None,
        busy_at: int | None = None, after: bool = False,
    ) -> Plan:
        """Delete, maybe dying at the `crash_at`-th storage call (a new process then recovers),
        or finding the image held by another process at the `busy_at`-th merge (nothing recorded
        as failed; once the holder is gone, recover or a retry finishes the job)."""
        self.inject(crash_at=crash_at, busy_at=busy_at, after=after)
        files = self.files_state()
        try:
            return self.ledger.delete(snap.vm, snap.name, strategy, branches)
        except SimulatedCrash:
            self.inject()
            event("crash recovered: delete")
            plan = self.fresh().view.vms[snap.vm].operation
            assert plan is not None
            self.ledger.recover(snap.vm)
            return Plan("delete", plan.steps)
        except ImageInUse as busy:
            self.inject()
            assert busy.exit_code == 4
            op = self.ledger.view.vms[snap.vm].operation
            if op is None:  # nothing had been destroyed: rolled back, nothing changed
                event("image in use, rolled back: delete")
                assert self.files_state() == files, "a delete rolled back for a held image changed files"
                return self.ledger.delete(snap.vm, snap.name, strategy, branches)
            event("image in use, recovered: delete")
            assert op.failure is None, "a held image was recorded as a failure"
            self.ledger.recover(snap.vm)
            return Plan("delete", op.steps)
        finally:
            self.inject()

    # ---- the world the histories start from --------------------------------------------------

    @initialize()
    def make_template(self) -> None:
        content = {c: 0x70 + c for c in range(0, self.clusters, 3)}
        self.storage.make_image(self.template, self.size, content)
        self.model.user_file(self.template, content, frozen=True)

    @precondition(lambda self: len(self.ledger.view.vms) < 3)
    @rule(target=vms, own=st.lists(st.dictionaries(st.integers(0, 11), st.integers(1, 255), max_size=6),
                                   min_size=1, max_size=2),
          on_template=st.booleans(), raw=st.booleans())
    def adopt(self, own: list[Content], on_template: bool, raw: bool) -> str:
        """A VM over its own qcow2 disks, the first maybe over a template, or raw."""
        vm = f"vm{next(self.names)}"
        disks = {}
        raw = raw and not on_template
        for i, content in enumerate(own):
            disk = "vda" if i == 0 else "vdb"
            fmt = "raw" if raw and i == 0 else "qcow2"
            path = f"{self.root}/vms/{vm}/{disk}.{'img' if fmt == 'raw' else 'qcow2'}"
            backing = self.template if on_template and i == 0 else None
            self.storage.make_image(path, self.size, content, backing=backing, fmt=fmt)
            self.model.user_file(path, content)
            disks[disk] = path
            below = self.model.frozen_files[self.template] if backing else {}
            self.model.disk(vm, disk, {**below, **content})
        self.ledger.adopt(vm, disks, pools=[f"{self.root}/templates"] if on_template else [])
        return vm

    @rule()
    def another_process_carries_on(self) -> None:
        """The next commands run in a new process, its view from the projection."""
        self.fresh()

    @rule(vm=vms, data=st.data())
    def guest_writes(self, vm: str, data: st.DataObject) -> None:
        assume(self.idle(vm))
        disk = data.draw(st.sampled_from(sorted(self.ledger.view.vms[vm].disks)))
        writes = data.draw(st.dictionaries(st.integers(0, self.clusters - 1), st.integers(1, 255), max_size=6))
        for cluster, pattern in writes.items():
            self.storage.write(self.active(vm, disk), cluster, pattern)
        self.model.wrote(vm, disk, writes)
        self.guest_wrote(self.active(vm, disk), writes)

    # ---- snapshot and revert ----------------------------------------------------------------

    def _expect_snapshot(self, vm: str, name: str, exclude: frozenset[str]) -> SnapRef:
        disks = self.ledger.view.vms[vm].disks
        return self.model.snapshot(vm, name, [d for d in disks if d not in exclude])

    @rule(target=snapshots, vm=vms, exclude_second=st.booleans())
    def snapshot(self, vm: str, exclude_second: bool) -> SnapRef:
        assume(self.idle(vm))
        return self.take(vm, exclude_second)

    def take(self, vm: str, exclude_second: bool) -> SnapRef:
        """Snapshot `vm` under a new name (without its second disk, maybe)."""
        name = f"s{next(self.names)}"
        exclude = frozenset({"vdb"} & set(self.ledger.view.vms[vm].disks)) if exclude_second else frozenset()
        self.ledger.snapshot(vm, name, exclude=exclude)
        return self._expect_snapshot(vm, name, exclude)

    @rule(snap=snapshots)
    def duplicate_snapshot_name_is_refused(self, snap: SnapRef) -> None:
        assume(snap in self.model.taken and self.idle(snap.vm))
        self.refused_and_nothing_changed(
            lambda: self.ledger.snapshot(snap.vm, snap.name), "a duplicate snapshot name was accepted",
            DuplicateName,
        )

    @rule(snap=snapshots)
    def revert(self, snap: SnapRef) -> None:
        assume(snap in self.model.taken and self.idle(snap.vm))
        self.ledger.revert(snap.vm, snap.name)
        self.model.revert(snap)

    @rule(target=snapshots, vm=vms, writes=st.lists(
        st.dictionaries(st.integers(0, 11), st.integers(1, 255), max_size=6), min_size=3, max_size=3))
    def branch_out(self, vm: str, writes: list[Content]) -> object:
        """Three snapshots with writes between them, then back to the middle one: the middle
        snapshot's image (a managed overlay) becomes a branch point with two histories."""
        assume(self.idle(vm))
        refs = []
        for content in writes:
            refs.append(self.take(vm, exclude_second=False))
            for disk in sorted(self.ledger.view.vms[vm].disks):
                for cluster, pattern in content.items():
                    self.storage.write(self.active(vm, disk), cluster, pattern)
                self.model.wrote(vm, disk, content)
                self.guest_wrote(self.active(vm, disk), content)
        self.ledger.revert(vm, refs[1].name)
        self.model.revert(refs[1])
        return multiple(*refs)

    @precondition(lambda self: self.snapshots_where("middle"))
    @rule(data=st.data())
    def revert_to_a_middle_snapshot(self, data: st.DataObject) -> None:
        """Reverting to a snapshot with a child snapshot starts an alternate history."""
        snap = data.draw(st.sampled_from(self.snapshots_where("middle")))
        self.ledger.revert(snap.vm, snap.name)
        self.model.revert(snap)

    # ---- delete -------------------------------------------------------------------------------

    @precondition(lambda self: self.snapshots_where("branch point"))
    @rule(data=st.data(), branches=st.sampled_from(["forbid", "pull", "keep"]),
          crash_at=st.none() | st.integers(1, 4), busy_at=st.none() | st.integers(1, 3),
          after=st.booleans())
    def delete_a_branch_point(
        self, data: st.DataObject, branches: str, crash_at: int | None, busy_at: int | None,
        after: bool,
    ) -> None:
        snap = data.draw(st.sampled_from(self.snapshots_where("branch point")))
        before = self.world()
        try:
            plan = self.deleting(snap, "auto", branches, crash_at, busy_at, after)
        except BranchPointRefused:
            assert branches == "forbid"
            assert self.world() == before, "a refused delete changed something"
            assert checks.last_type(self.app) == "OperationRefused", "the attempt is not in the trail"
            return
        except StrategyNotAllowed as refusal:  # a branch is a user's file: never written
            assert branches == "pull" and "not managed" in str(refusal)
            assert self.world() == before, "a refused delete changed something"
            return
        assert branches != "forbid", "a managed branch point was deleted without --branches"
        event(f"branch point delete: {describe(plan)}")
        self.model.delete(snap)

    @rule(target=snapshots, snap=consumes(snapshots),
          strategy=st.sampled_from(["auto", "auto", "commit", "pull"]),
          branches=st.sampled_from(["forbid", "pull", "keep"]),
          crash_at=st.none() | st.integers(1, 4), busy_at=st.none() | st.integers(1, 3),
          after=st.booleans())
    def delete(
        self, snap: SnapRef, strategy: str, branches: str, crash_at: int | None,
        busy_at: int | None, after: bool,
    ) -> object:
        if snap not in self.model.taken:
            return multiple()
        assume(self.idle(snap.vm))
        before = self.world()
        written = self.bytes_written()
        try:
            plan = self.deleting(snap, strategy, branches, crash_at, busy_at, after)
        except (BranchPointRefused, StrategyNotAllowed) as refusal:
            note(f"refused: {refusal}")
            event(f"delete refused: {type(refusal).__name__}")
            assert self.world() == before, "a refused delete changed something"
            assert strategy != "auto" or branches != "keep", "auto + keep must never refuse"
            if isinstance(refusal, BranchPointRefused):
                assert branches == "forbid"
            return snap
        now = self.bytes_written()
        if crash_at is None and written is not None and now is not None:
            assert now - written <= plan.bytes_moved, "a delete wrote more than its plan says"
        event(f"delete: {describe(plan)}")
        self.model.delete(snap)
        return multiple()


    # ---- invariants: after every step ---------------------------------------------------------

    @invariant()
    def no_operation_is_left_open(self) -> None:
        checks.nothing_open(self.ledger)

    @invariant()
    def every_snapshot_and_present_reads_as_modelled(self) -> None:
        checks.bytes_as_modelled(self.ledger, self.storage, self.model)

    @invariant()
    def user_files_are_never_deleted_and_frozen_ones_never_change(self) -> None:
        checks.user_files_kept(self.storage, self.model)

    @invariant()
    def ledger_agrees_with_disk_on_backing(self) -> None:
        checks.backing_as_recorded(self.ledger, self.storage)

    @invariant()
    def snapledgers_own_operations_leave_no_drift(self) -> None:
        checks.no_drift(self.ledger, self.storage)

    @invariant()
    def the_view_is_the_fold_of_the_events(self) -> None:
        checks.view_is_the_fold(self.ledger)

