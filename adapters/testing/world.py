"""A ledger over simulated storage with the byte model beside it: lay out VMs (strategies.Layout),
run histories (strategies.Op) and check every invariant after each step. `replayed` loads an
exported history (`snapledger export --format jsonl`) into one, so an incident is a test case.
"""

from __future__ import annotations

import itertools
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from snapledger.adapters.compose import ledger_service
from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.eventstore.export import read_export, replay_store
from snapledger.adapters.service.commands import Snapledger
from snapledger.adapters.storage.simulated import SimulatedCrash, SimulatedStorage
from snapledger.domain.errors import SnapledgerError
from snapledger.domain.images import OwnerClass
from snapledger.projections.dag import ImageDag
from snapledger.projections.retention import KeepRules
from snapledger.testing import checks
from snapledger.testing.faults import FaultyPort
from snapledger.testing.model import CLUSTER, ByteModel, SnapRef
from snapledger.testing.strategies import CLUSTERS, Layout, Op

TEMPLATE = "/templates/template.qcow2"


class World:
    """snapledger on one simulated host, and what its disks must read."""

    def __init__(self, app: LedgerApplication | None = None, storage: SimulatedStorage | None = None,
                 every_host: bool = False) -> None:
        self.app = app if app is not None else LedgerApplication("memory:")
        self.storage = storage if storage is not None else SimulatedStorage()
        self.port = FaultyPort(self.storage)  # dies after a storage call; the simulation, before
        self.every_host = every_host
        ticks = itertools.count()
        self.clock = lambda: f"2026-01-01T00:00:00.{next(ticks):06d}+00:00"
        self.ledger = self.fresh()
        self.model = ByteModel()
        self.names = itertools.count(1)
        self.outcomes: list[str] = []

    def fresh(self) -> Snapledger:
        """A new process on the same store (after a crash)."""
        self.ledger = ledger_service(self.app, self.port, clock=self.clock, every_host=self.every_host)
        return self.ledger

    def check(self) -> None:
        """Every invariant (checks.every_invariant): raises AssertionError saying what is wrong."""
        checks.every_invariant(self.ledger, self.storage, self.model)

    # ---- layouts ------------------------------------------------------------------------------

    def lay_out(self, layout: Layout) -> None:
        """Make the layout's files as a user would and adopt its VMs."""
        size = CLUSTERS * CLUSTER
        if not self.storage.exists(TEMPLATE):
            self.storage.make_image(TEMPLATE, size, layout.template)
            self.model.user_file(TEMPLATE, layout.template, frozen=True)
        below = self.storage.read_all(TEMPLATE)
        vms = [(layout.vm, layout.disks)] + [(name, layout.disks[:1]) for name in layout.sharing]
        for vm, disks in vms:
            paths = {}
            for disk in disks:
                on = disk.on_template or vm != layout.vm
                fmt = "qcow2" if on else disk.fmt
                path = f"/vms/{vm}/{disk.name}.{'img' if fmt == 'raw' else 'qcow2'}"
                self.storage.make_image(path, size, disk.content, backing=TEMPLATE if on else None, fmt=fmt)
                self.model.user_file(path, disk.content)
                self.model.disk(vm, disk.name, {**below, **disk.content} if on else disk.content)
                paths[disk.name] = path
            pools = ["/templates"] if any(p != TEMPLATE and self.storage.files[p].backing for p in paths.values()) else []
            self.ledger.adopt(vm, paths, pools=pools)

    # ---- histories ----------------------------------------------------------------------------

    def run(self, ops: Iterable[Op], check: bool = True) -> list[str]:
        """Run each operation, checking every invariant after each (with `check`); the outcomes."""
        for op in ops:
            self.outcomes.append(self.apply(op))
            if check:
                self.check()
        return self.outcomes

    def apply(self, op: Op) -> str:
        """Run one operation as a user (or a guest) would; what came of it."""
        view = self.ledger.refresh()
        if op.vm not in view.vms:  # a typo would make every step a no-op and the test pass
            raise ValueError(f"{op}: the ledger has no VM {op.vm!r} (it has {', '.join(sorted(view.vms)) or 'none'})")
        vm = view.live_vms().get(op.vm)
        if vm is None or vm.operation is not None:
            return "no such VM"
        refs = self.model.snapshots_of(op.vm)
        snap = refs[op.index % len(refs)] if refs else None
        if op.kind == "write":
            if op.disk not in vm.disks:
                return "no such disk"
            for cluster, pattern in (op.content or {}).items():
                self.storage.write(vm.disks[op.disk], cluster, pattern)
            self.model.wrote(op.vm, op.disk, op.content or {})
            return "written"
        if op.kind == "swap":
            return self._swap(op, snap)
        action: Callable[[], object]
        if op.kind == "snapshot":
            name = f"h{next(self.names)}"
            exclude = [d for d in vm.disks if d != op.disk] if op.flag else []
            action = lambda: self.ledger.snapshot(op.vm, name, exclude=exclude)  # noqa: E731
        elif op.kind == "gc":
            action = lambda: self.ledger.gc(op.vm, op.flag)  # noqa: E731
        elif op.kind == "prune":
            action = lambda: self.ledger.prune(op.vm, KeepRules(last=op.keep_last), op.branches)  # noqa: E731
        elif snap is None:
            return "no snapshot"
        elif op.kind == "revert":
            action = lambda: self.ledger.revert(op.vm, snap.name)  # noqa: E731
        else:
            action = lambda: self.ledger.delete(op.vm, snap.name, op.strategy, op.branches)  # noqa: E731
        return self._attempt(op, action, snap)

    def _swap(self, op: Op, snap: SnapRef | None) -> str:
        disks = self.ledger.view.vms[op.vm].disks
        if op.disk not in disks:
            return "no such disk"
        # beside the disk's active image: a directory the VM may use (a replayed VM's are its own)
        path = f"{posixpath.dirname(disks[op.disk])}/swapped{next(self.names)}.qcow2"
        below, backing = {}, None
        if op.flag and snap is not None and op.disk in self.model.taken[snap]:
            backing = self.ledger.view.vms[op.vm].snapshots[snap.name].disks[op.disk]
            below = self.model.taken[snap][op.disk]
        size = self.storage.inspect(disks[op.disk]).virtual_size  # a replayed disk's, not ours
        self.storage.make_image(path, size, op.content, backing=backing)
        self.model.user_file(path, op.content or {})
        self.ledger.swap_disk(op.vm, op.disk, path)
        self.model.disk(op.vm, op.disk, {**below, **(op.content or {})})
        return "swapped"

    def _attempt(self, op: Op, action: Callable[[], object], snap: SnapRef | None) -> str:
        """Run `action` with the op's crash armed; recover after one; the model learns what the
        ledger closed (a refusal must have changed nothing)."""
        before, files = self.app.recorder.max_notification_id() or 0, checks.files_state(self.storage)
        changes = checks.changes(self.app)
        if op.crash is not None and op.crash.after:
            self.port.inject(crash_at=op.crash.at, after=True)
        elif op.crash is not None:  # the simulation dies mid-call, a merge half done
            self.storage.inject(crash_at=op.crash.at)
        outcome = "done"
        try:
            action()
        except SimulatedCrash:
            outcome = "crashed, recovered"
            self.port.inject()
            self.storage.inject()
            self.fresh().recover(op.vm)
        except SnapledgerError as error:
            outcome = type(error).__name__
        finally:
            self.port.inject()
            self.storage.inject()
        if checks.changes(self.app) == changes:
            assert checks.files_state(self.storage) == files, f"{op}: {outcome}, nothing recorded, but files changed"
        self._learn(op.vm, before, snap)
        return outcome

    def _learn(self, vm: str, before: int, snap: SnapRef | None) -> None:
        """What the ledger closed since `before`: snapshots taken, a revert, snapshots deleted."""
        record = self.ledger.refresh().vms[vm]
        for ev, _ in self.app.events_after(before):
            if ev.originator_id != record.id:
                continue
            kind = type(ev).__name__
            if kind == "Reverted" and snap is not None:
                self.model.revert(snap)
        for name, taken in record.snapshots.items():
            if SnapRef(vm, name) not in self.model.taken:
                self.model.snapshot(vm, name, list(taken.disks))
        for ref in self.model.snapshots_of(vm):
            if ref.name not in record.snapshots:
                self.model.delete(ref)


def replayed(path: str | Path) -> World:
    """The exported history at `path` on simulated storage, every invariant checked.

    Each image is made as recorded (format, backing, size, device and inode) holding one cluster
    of its own pattern byte (the production bytes are not in an export), and `reconcile` records
    the simulated files' times and sizes, so operations can go on from there (`World.run`). An
    operation the export leaves open (the host died in it) is recovered first, as `snapledger
    recover` would on the host, and no other snapshot or present may read differently after it
    (`World.outcomes` says which)."""
    with open(path, encoding="utf-8") as lines:
        app = replay_store(read_export(lines, str(path)))
    app.read_only = False  # a copy in memory: a history run on it records there, and only there
    world = World(app=app, every_host=True)
    view = world.ledger.refresh()
    facts = {p: r.facts for vm in view.vms.values() for p, r in vm.images.items()}
    devices = Counter(f.device for f in facts.values())
    world.storage.device = devices.most_common(1)[0][0] if devices else world.storage.device
    made: set[str] = set()

    def make(path: str) -> None:
        if path in made or path not in facts:
            return
        made.add(path)
        f = facts[path]
        if f.backing is not None:
            make(f.backing)
        number = len(made)
        clusters = max(f.virtual_size // CLUSTER, 1)
        world.storage.make_image(path, f.virtual_size, {number % clusters: 1 + number % 255},
                                 backing=f.backing, fmt=f.format)
        world.storage.files[path].inode = f.inode

    for path in sorted(facts):
        make(path)
    dag = ImageDag(view)
    for name, vm in sorted(view.live_vms().items()):
        for disk, active in vm.disks.items():
            world.model.disk(name, disk, world.storage.read_all(active))
        for snapshot, record in vm.snapshots.items():
            world.model.taken[SnapRef(name, snapshot)] = {
                d: world.storage.read_all(p) for d, p in record.disks.items()
            }
    for name, vm in sorted(view.live_vms().items()):
        unfinished = vm.operation
        if unfinished is not None:  # the host died mid-operation: recover, as it would there
            world.outcomes.append(f"{name}: unfinished {unfinished.kind} recovered")
            before = world.app.recorder.max_notification_id() or 0
            world.ledger.recover(name)
            target = SnapRef(name, unfinished.target or "")
            world._learn(name, before, target if target in world.model.taken else None)
        world.ledger.reconcile(name)
    for path, node in dag.nodes.items():
        if node.owner is not OwnerClass.MANAGED and path in made:
            world.model.user_file(path, world.storage.read_all(path), frozen=node.owner is OwnerClass.READ_ONLY)
    world.check()
    return world
