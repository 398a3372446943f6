"""The world outside snapledger, as rules of the ledger state machine (mixed into LedgerMachine).

Users make their own qcow2 files on any image (and files on those), and those must go on reading
exactly what they read, through their whole chain. A guest writes a qcow2 header into its raw
disk. And for the length of one operation: a hard link to an image, another process holding an
image, a file gone away, qemu-img missing, or the ledger's filesystem filling up; then the world
is put right and `recover` run. What must hold: nothing held or hard-linked is written or
deleted, a refusal changes no file and leaves no operation open, and every byte the model knows
still reads back.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

from eventsourcing.persistence import OperationalError
from hypothesis import event, note
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from snapledger.adapters.eventstore.application import LedgerApplication
from snapledger.adapters.storage.simulated import SimImage
from snapledger.domain.errors import (
    BranchPointRefused,
    Conflict,
    LedgerUnwritable,
    Refused,
    StrategyNotAllowed,
    ToolMissing,
)
from snapledger.testing.model import ByteModel
from snapledger.testing.rules import closed_since

Content = dict[int, int]
WORLDS = ["hard link", "held for writing", "held for reading", "gone", "qemu-img missing",
          "ledger full"]


class FillableLedger(LedgerApplication):
    """The in-memory store on a filesystem that can fill up: from the `fills_in`-th save on,
    every save fails as SQLite's does on a full disk, recording nothing, until it is freed."""

    fills_in: int | None = None
    full = False

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        if self.fills_in is not None:
            self.fills_in -= 1
            if self.fills_in <= 0:
                self.full, self.fills_in = True, None
        if self.full:
            raise OperationalError("database or disk is full")
        return super().save(*objs, **kwargs)


class WorldActors:
    """Rules for LedgerMachine (a snapledger.testing ConformanceMachine: storage, ledger, app,
    the byte model `model`, `an_operation`...)."""

    storage: Any
    ledger: Any
    app: FillableLedger
    model: ByteModel
    names: Any

    def init_world(self) -> None:
        # a user's own file -> (the file it rests on, what it holds itself)
        self.hand_made: dict[str, tuple[str, Content]] = {}
        # what each file a user's file rests on reads (kept up to date as guests write)
        self.base_reads: dict[str, Content] = {}

    # ---- users' own files ----------------------------------------------------------------

    @precondition(lambda self: self.ledger.view.live_vms())
    @rule(data=st.data(), content=st.dictionaries(st.integers(0, 11), st.integers(1, 255), max_size=3),
          on_their_own=st.booleans())
    def user_makes_an_overlay(self, data: st.DataObject, content: Content, on_their_own: bool) -> None:
        """`qemu-img create -b IMAGE hand.qcow2` next to a VM's images, on any image of it (or
        on a file the user made before): the ledger knows nothing of it."""
        vms = self.ledger.view.live_vms()
        vm = vms[data.draw(st.sampled_from(sorted(vms)))]
        bases = sorted(p for p in vm.images if p in self.storage.files)
        if on_their_own and self.hand_made:
            bases = sorted(self.hand_made)
        if not bases:
            return
        base = data.draw(st.sampled_from(bases))
        directory = posixpath.dirname(sorted(vm.disks.values())[0])
        path = f"{directory}/hand{next(self.names)}.qcow2"
        self.base_reads.setdefault(base, self.storage.read_all(base))
        self.storage.make_image(path, self.storage.files[base].virtual_size, content, backing=base)
        self.model.user_file(path, content)
        self.hand_made[path] = (base, dict(content))
        self.base_reads[path] = self.expected_reads(path)
        event("user made an overlay" + (" on their own file" if base in self.hand_made else ""))

    def expected_reads(self, path: str) -> Content:
        base, own = self.hand_made[path]
        below = self.expected_reads(base) if base in self.hand_made else self.base_reads[base]
        size = self.storage.files[path].virtual_size // (64 * 1024)
        return {c: v for c, v in {**below, **own}.items() if v and c < size}

    def guest_wrote(self, active: str, writes: Content) -> None:
        """LedgerMachine's guest_writes tells: a file users rest on is written by its guest."""
        if active in self.base_reads:
            self.base_reads[active].update(writes)

    @invariant()
    def every_file_a_user_made_reads_exactly_as_before(self) -> None:
        for path in self.hand_made:
            assert path in self.storage.files, f"{path}, a user's file, was deleted"
            got = self.storage.read_all(path)  # raises if any file of its chain is gone
            assert got == self.expected_reads(path), f"{path} reads {got}, not {self.expected_reads(path)}"

    @invariant()
    def every_image_is_recorded_in_its_true_format(self) -> None:
        for vm in self.ledger.view.live_vms().values():
            for path, record in vm.images.items():
                if path in self.storage.files:
                    assert record.facts.format == self.storage.files[path].format, path

    # ---- a guest writes a qcow2 header into its raw disk ---------------------------------

    @rule(data=st.data())
    def guest_writes_a_qcow2_header_into_its_raw_disk(self, data: st.DataObject) -> None:
        raw = sorted(
            (vm.name, disk) for vm in self.ledger.view.live_vms().values() if vm.operation is None
            for disk, path in vm.disks.items() if self.storage.files[path].format == "raw"
        )
        if not raw:
            return
        vm, disk = data.draw(st.sampled_from(raw))
        others = sorted(p for p in self.storage.files if not p.startswith(f"/vms/{vm}/"))
        victim = data.draw(st.sampled_from(others)) if others else None
        active = self.ledger.view.vms[vm].disks[disk]
        self.storage.forge_header(active, victim)
        self.model.wrote(vm, disk, {0: 0x51})
        self.guest_wrote(active, {0: 0x51})
        event("guest wrote a qcow2 header into its raw disk")

    # ---- the world, for the length of one operation --------------------------------------

    @precondition(lambda self: self.ledger.view.live_vms())
    @rule(data=st.data(), world=st.sampled_from(WORLDS), saves=st.integers(1, 6))
    def the_world_interferes_with_one_operation(self, data: st.DataObject, world: str, saves: int) -> None:
        vms = {n: v for n, v in self.ledger.view.live_vms().items() if v.operation is None}
        if not vms:
            return
        vm = vms[data.draw(st.sampled_from(sorted(vms)))]
        attempt, expect = self.an_operation(data, vm.name)
        known = sorted(p for p in vm.images if p in self.storage.files)
        # a file the ledger knows may go away; one it does not know (a user's) can't be looked for
        files = known if world == "gone" else sorted(self.storage.files)
        if not files:
            return
        target = data.draw(st.sampled_from(files))
        before = self.app.recorder.max_notification_id() or 0
        files_before = self.world()[1]
        watched: dict[str, tuple[object, ...]] = {}
        away: SimImage | None = None
        if world == "hard link":
            self.storage.hard_link(target)
            watched[target] = files_before[target]
        elif world.startswith("held"):
            self.storage.hold(target, writing=world == "held for writing")
            watched[target] = files_before[target]
        elif world == "gone":
            away = self.storage.files.pop(target)
        elif world == "qemu-img missing":
            self.storage.tool_missing = True
        else:
            self.app.fills_in = saves
        outcome = "done"
        try:
            attempt()
        except (BranchPointRefused, StrategyNotAllowed):
            outcome = "refused by the rules"
        except (Refused, Conflict, ToolMissing, LedgerUnwritable) as error:
            outcome = type(error).__name__
            note(f"{world} on {target}: {error}")
        finally:
            for path, seen in watched.items():  # held or linked: never written or deleted
                assert path in self.storage.files, f"{path} ({world}) was deleted"
                assert self.world()[1][path] == seen, f"{path} ({world}) was written"
            if world == "hard link":
                self.storage.unlink_name(target)
            elif world.startswith("held"):
                self.storage.release(target)
            elif world == "gone":
                assert away is not None
                assert target not in self.storage.files, f"{target} was made again while gone"
                self.storage.files[target] = away
            elif world == "qemu-img missing":
                self.storage.tool_missing = False
            else:
                self.app.fills_in, self.app.full = None, False
        event(f"world: {world}: {outcome}")
        self.settle(vm.name, outcome, before, files_before, expect)
        if world == "hard link":
            self.reconcile_a_link_come_and_gone(target)

    def reconcile_a_link_come_and_gone(self, target: str) -> None:
        """The link came and went again, and moved the file's ctime each time: for a VM that
        holds it frozen (not active, not detached; outside libvirt) that is drift, and only
        that. `reconcile` records it; then the disks agree again (drift is not a dead end)."""
        for vm in sorted(self.ledger.refresh().live_vms().values(), key=lambda v: v.name):
            findings = self.ledger.verify(vm.name)
            if not findings:
                continue
            event("world: hard link: ctime drift reconciled")
            expected = f"{vm.name}: {target}: changed since it was frozen (ctime "
            assert all(f.startswith(expected) for f in findings), findings
            self.ledger.reconcile(vm.name)
            assert self.ledger.verify(vm.name) == []

    def settle(
        self, vm: str, outcome: str, before: int, files_before: dict[str, Any],
        expect: Callable[[], None],
    ) -> None:
        """After the world is put right: a refusal changed no file and left nothing open; an
        operation cut short (the ledger full mid-way, an image found locked mid-merge) is
        finished by recover; the model learns what was done from the ledger's closing event."""
        open_op = self.fresh().view.vms[vm].operation
        if outcome in ("DriftFound", "ToolMissing", "refused by the rules", "Refused",
                       "BranchPointRefused", "StrategyNotAllowed", "OperationInProgress"):
            assert open_op is None, f"a refusal ({outcome}) left an operation open"
            assert self.world()[1] == files_before, f"a refusal ({outcome}) changed a file"
            return
        if open_op is not None:
            assert outcome in ("LedgerUnwritable", "ImageInUse"), outcome
            assert open_op.failure is None or outcome == "LedgerUnwritable"
            self.ledger.recover(vm)
        elif outcome != "done" and not closed_since(self.app, self.ledger, before, vm):
            assert self.world()[1] == files_before, f"{outcome} changed a file, nothing recorded"
        if outcome == "done" or closed_since(self.app, self.ledger, before, vm):
            expect()
