"""Per VM, the two indexes the image DAG is read through (issue 13, item 2): the images resting
on each image (its children) and the snapshots that freeze each image (each list sorted). With them a planner
reads what it touches, not every image of a VM with 10,000 snapshots.

An index belongs to one VM object at one version: a command's private copy starts with its
original's (view.private_copy), and a view keeps its VMs' indexes up to date as it applies their
events (`changes_before` / `IndexChange.after`), so that building one, O(images), happens once
per process rather than once per plan. An event whose effect is not described here drops the
index; the next read builds it again from the VM. The state machine checks after every step
that an index read equals one built afresh (tests/unit/test_ledger_state_machine.py).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from snapledger.domain.steps import (
    CreateOverlay,
    DeleteFile,
    MoveFrozen,
    Pull,
    RebaseUnsafe,
    ReleaseImage,
)
from snapledger.domain.vm import VirtualMachine

from .kept import KeptPerObject

Frozen = tuple[str, str]  # (snapshot, disk)


@dataclass
class VmImageIndex:
    version: int
    # Entries are tuples, replaced on change and never changed in place, so that a copy of an
    # index is a copy of its two dicts (a command's private copy of a VM with 10,000 images)
    children: dict[str, tuple[str, ...]]  # backing path -> this VM's images on it, sorted
    frozen: dict[str, tuple[Frozen, ...]]  # image path -> the snapshots freezing it, sorted

    @classmethod
    def built(cls, vm: VirtualMachine) -> VmImageIndex:
        children: dict[str, list[str]] = {}
        for record in vm.images.values():
            backing = record.facts.backing
            if backing is not None:
                children.setdefault(backing, []).append(record.facts.path)
        frozen: dict[str, list[Frozen]] = {}
        for snap in vm.snapshots.values():
            for disk, path in snap.disks.items():
                frozen.setdefault(path, []).append((snap.name, disk))
        return cls(
            vm.version,
            {k: tuple(sorted(v)) for k, v in children.items()},
            {k: tuple(sorted(v)) for k, v in frozen.items()},
        )

    def copied(self) -> VmImageIndex:
        return VmImageIndex(self.version, self.children.copy(), self.frozen.copy())

    def unlink(self, path: str, backing: str | None) -> None:
        if backing is not None:
            _remove(self.children, backing, path)

    def link(self, path: str, backing: str | None) -> None:
        if backing is not None:
            _insert(self.children, backing, path)

    def unfreeze(self, snapshot: str, disks: dict[str, str]) -> None:
        for disk, path in disks.items():
            _remove(self.frozen, path, (snapshot, disk))

    def freeze(self, snapshot: str, disks: dict[str, str]) -> None:
        for disk, path in disks.items():
            _insert(self.frozen, path, (snapshot, disk))


def _remove(table: dict[str, tuple[Any, ...]], key: str, item: Any) -> None:
    listed = table.get(key, ())
    if item in listed:
        rest = tuple(x for x in listed if x != item)
        if rest:
            table[key] = rest
        else:
            del table[key]


def _insert(table: dict[str, tuple[Any, ...]], key: str, item: Any) -> None:
    listed = table.get(key, ())
    if item not in listed:
        table[key] = tuple(sorted((*listed, item)))


# The indexes by VM object (kept.py), each checked against the VM's version before use.
_INDEXES: KeptPerObject[VmImageIndex] = KeptPerObject()


def kept_index(vm: VirtualMachine) -> VmImageIndex | None:
    """The index kept for `vm` as it is now, if any (none is built)."""
    held = _INDEXES.get(vm)
    return held if held is not None and held.version == vm.version else None


def index_of(vm: VirtualMachine) -> VmImageIndex:
    """`vm`'s index as it is now: the one kept for it; for a private copy still equal to its
    original, the original's (built and kept there, so that the view keeps it up to date as
    it applies the copy's events once they are saved); else built (O(images)) and kept."""
    held = kept_index(vm)
    if held is not None:
        return held
    link = _ORIGINALS.pop(vm)
    original = link() if link is not None else None
    if original is not None and original.version == vm.version:
        index = index_of(original).copied()
    else:
        index = VmImageIndex.built(vm)
    _INDEXES.put(vm, index)
    return index


# A private copy and the view's VM it was copied from, until the copy's index is first read.
_ORIGINALS: KeptPerObject[weakref.ref[VirtualMachine]] = KeptPerObject()


def share_index(original: VirtualMachine, copy: VirtualMachine) -> None:
    """A private copy starts with its original's index, a copy of it (changes to one stay
    there), when first read."""
    held = kept_index(original)
    if held is not None and original.version == copy.version:
        _INDEXES.put(copy, held.copied())
    else:
        _ORIGINALS.put(copy, weakref.ref(original))


# ---- keeping an index up to date as events apply ------------------------------------------------

# Events that change neither images' backing nor snapshots' frozen images.
_NO_EFFECT = frozenset({
    "OperationResumed", "OperationFailed", "Reverted", "ImagesDiscarded",
    "LibvirtBound", "PivotRequested", "DefinitionRecorded", "DriftDetected", "HomeMoved",
    "OperationRefused",
    "Retired",
})


@dataclass
class IndexChange:
    """What an event is about to change in a VM's index: the images whose records may change
    (with their backing before) and the snapshots whose frozen images may (with them before)."""

    index: VmImageIndex
    backing_before: dict[str, str | None]
    frozen_before: dict[str, dict[str, str]]

    def after(self, vm: VirtualMachine) -> None:
        """Apply the change once the event has been applied to `vm`."""
        for path, before in self.backing_before.items():
            self.index.unlink(path, before)
            record = vm.images.get(path)
            if record is not None:
                self.index.link(path, record.facts.backing)
        for name, before_disks in self.frozen_before.items():
            self.index.unfreeze(name, before_disks)
            snap = vm.snapshots.get(name)
            if snap is not None:
                self.index.freeze(name, snap.disks)
        self.index.version = vm.version
        _INDEXES.put(vm, self.index)


def changes_before(vm: VirtualMachine, event: object) -> IndexChange | None:
    """Called before `event` is applied to `vm`: how to bring `vm`'s kept index up to date
    after it, or None (no index kept, or an event this does not follow: the index is dropped
    and built again when next read)."""
    held = kept_index(vm)
    if held is None:
        return None
    kind = type(event).__name__
    paths: list[str] | None = []
    snapshots: list[str] = []
    if kind in _NO_EFFECT:
        pass
    elif kind in ("SnapshotTaken", "SnapshotDeleted"):
        snapshots = [str(getattr(event, "name", ""))]
    elif kind == "StorageStepCompleted":
        step = _step_of(vm, event)
        if step is None:
            paths = None
        else:
            paths = [*_step_paths(step), *_observed_paths(event)]
            snapshots = [step.snapshot] if isinstance(step, MoveFrozen) else []
    elif kind == "OperationRolledBack":
        paths = [str(p) for p in getattr(event, "undone", ())]
    elif kind in ("ImagesObserved", "OperationStarted"):
        paths = _observed_paths(event)
    else:
        paths = None
    if paths is None:
        _INDEXES.pop(vm)
        return None
    before = {p: (r.facts.backing if (r := vm.images.get(p)) is not None else None) for p in paths}
    frozen = {n: dict(s.disks) if (s := vm.snapshots.get(n)) is not None else {} for n in snapshots}
    return IndexChange(held, before, frozen)


def _step_paths(step: object) -> list[str]:
    """The images whose record a storage step adds, removes or re-points (VirtualMachine's
    _apply_step)."""
    if isinstance(step, (CreateOverlay, DeleteFile, ReleaseImage)):
        return [step.path]
    if isinstance(step, (Pull, RebaseUnsafe)):
        return [step.image]
    return []


def _step_of(vm: VirtualMachine, event: object) -> Any:
    operation = vm.operation
    index = getattr(event, "index", None)
    if operation is None or operation.op_id != getattr(event, "op_id", None):
        return None
    if not isinstance(index, int) or not 0 <= index < len(operation.steps):
        return None
    return operation.steps[index]


def _observed_paths(event: object) -> list[str]:
    return [str(o["path"]) for o in getattr(event, "observed", ()) if isinstance(o, dict) and "path" in o]
