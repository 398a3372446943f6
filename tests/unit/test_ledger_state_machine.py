"""The proof: random histories against the real application and an independent byte model.

The machine is snapledger.testing's ConformanceMachine (adapters/testing/machine.py: the byte
model, the operations with every option, crashes before and after storage calls, refusals, and
the invariants every storage adapter must keep) over SimulatedStorage, with what only the
simulation can do on top: merges left half done by a crash (SimulatedStorage.inject), symlinks,
backing files rewritten behind snapledger's back, the world of machine_world.py (users' own
files, hard links, a full ledger...), and checks of snapledger's own read models: the lazy DAG,
the persisted projection and its archive points. After every step the disk must agree with the
model, whatever snapledger believes.
"""

from __future__ import annotations

from dag_reference import eager_dag, lazy_dag
from hypothesis import assume
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, rule
from machine_world import FillableLedger, WorldActors
from projection_helpers import rebuilt, view_state

from snapledger.adapters.checkpoint.audit import projection_findings
from snapledger.adapters.checkpoint.memory import MemoryProjectionStore
from snapledger.adapters.checkpoint.persisted import PersistedProjection
from snapledger.adapters.storage.simulated import SimulatedStorage
from snapledger.domain.errors import BadPath, DriftFound
from snapledger.domain.images import OwnerClass
from snapledger.projections.dag import ImageDag
from snapledger.projections.dag_index import VmImageIndex, kept_index
from snapledger.projections.documents import json_text, vm_document
from snapledger.testing import ConformanceMachine
from snapledger.testing.checks import changes

CLUSTERS = ConformanceMachine.clusters
SIZE = CLUSTERS * 64 * 1024
TEMPLATE = "/templates/template.qcow2"
CHECKPOINT_EVERY = 5  # archive points of the persisted projection, in ledger positions
ELSEWHERE = "/elsewhere/stray.qcow2"  # in no VM's directories


class LedgerMachine(WorldActors, ConformanceMachine):
    storage: SimulatedStorage
    vms = ConformanceMachine.vms

    def storage_adapter(self) -> SimulatedStorage:
        return SimulatedStorage()

    def __init__(self) -> None:
        super().__init__()
        self.init_world()

    # ---- the kit's hooks -----------------------------------------------------------------

    def ledger_application(self) -> FillableLedger:
        return FillableLedger("memory:")

    def projection(self) -> PersistedProjection:
        """A process's persisted projection, with archive points every few positions."""
        return PersistedProjection(self.app, every=CHECKPOINT_EVERY)

    def inject(
        self, *, crash_at: int | None = None, fail_at: int | None = None,
        busy_at: int | None = None, after: bool = False,
    ) -> None:
        """The simulation's own faults (a crash leaves a merge half done, as a killed qemu-img
        does); a crash after a call (the step done, unheard of) through the kit's FaultyPort."""
        self.port.inject(crash_at=crash_at if after else None, after=after)
        self.storage.inject(crash_at=None if after else crash_at, fail_at=fail_at, busy_at=busy_at)

    def files_state(self) -> dict[str, tuple[object, ...]]:
        """Every file exactly: what it names below it and its own clusters (not only its reads)."""
        return {
            path: (img.backing, img.backing_format, tuple(sorted(img.clusters.items())))
            for path, img in self.storage.files.items()
        }

    def world(self) -> tuple[int, dict[str, tuple[object, ...]]]:
        return changes(self.app), self.files_state()

    @initialize()
    def make_a_stray_file(self) -> None:
        self.storage.make_image(ELSEWHERE, SIZE, {0: 0xEE})
        self.model.user_file(ELSEWHERE, {0: 0xEE}, frozen=True)

    # ---- rules only the simulation can play ----------------------------------------------

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

    # ---- invariants of snapledger's own read models --------------------------------------

    @invariant()
    def frozen_files_keep_their_own_clusters(self) -> None:
        for path, content in self.model.frozen_files.items():
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
            if node.owner is OwnerClass.READ_ONLY and path in self.model.frozen_files:
                assert self.storage.files[path].clusters == self.model.frozen_files[path]

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


TestLedgerStateMachine = LedgerMachine.TestCase
