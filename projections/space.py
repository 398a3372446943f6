"""`usage`: the space of a VM, per snapshot and per image (semantics.md, "Retention, names,
space"). A pure function of a view and the sizes an adapter measured on the disks just now
(adapters/service/space.py measures them, one look at each image).

- An image's `allocated`: the bytes holding data in that layer alone (what `qemu-img map`
  reports as data at depth 0); `size`: its file's size on the host.
- A snapshot's `allocated`: the bytes allocated in its frozen images (sizes.py).
- A snapshot's `freeable`: the bytes of the files `delete VM NAME` (auto, branches forbid)
  would remove now, from the very plan the delete planner makes, on the measured sizes
  (retention.bytes_freed, as `prune` and `delete --dry-run` count them). What the merge moves
  into other images (`moves`) may make those grow by up to that much. A snapshot whose delete
  the planner refuses now (a branch point, an open operation) has `freeable` None, with the
  refusal: "can't be freed now" is not "frees nothing".

There is no VM-wide freeable total: deletions change what the next one frees, so their sum
means nothing (`prune --dry-run` plans a whole set of them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from snapledger.domain.errors import SnapledgerError
from snapledger.domain.images import ImageFacts, OwnerClass
from snapledger.domain.steps import BranchOption, DeleteFile, Step, Strategy, touched_paths

from .cost import CostModel
from .dag import ImageDag, owner_class
from .planners import plan_delete
from .retention import bytes_freed
from .sizes import frozen_allocated
from .view import LedgerView, private_copy, replacing


@dataclass(frozen=True)
class ImageSpace:
    path: str
    owner: OwnerClass
    allocated: int
    size: int
    measured: bool  # False: the ledger's last recorded facts (the disk could not be read here)


@dataclass(frozen=True)
class SnapshotSpace:
    name: str
    allocated: int
    freeable: int | None  # None: a delete is refused now (`refused` says why)
    moves: int | None  # bytes the delete's merges would move into other images
    refused: str | None = None


@dataclass(frozen=True)
class VmSpace:
    vm: str
    host: str | None
    snapshots: tuple[SnapshotSpace, ...]
    images: tuple[ImageSpace, ...]
    notes: tuple[str, ...] = ()

    @property
    def allocated(self) -> int:
        """Bytes allocated in every image the VM's ledger holds, each counted once."""
        return sum(image.allocated for image in self.images)

    @property
    def size(self) -> int:
        return sum(image.size for image in self.images)

    @property
    def measured(self) -> bool:
        return all(image.measured for image in self.images)


def with_measured(view: LedgerView, vm_name: str, measured: Mapping[str, ImageFacts]) -> LedgerView:
    """The view with the VM's images as measured (a private copy observes them, as a command's
    `prepare` does before planning), so planners cost merges on what the disks hold now."""
    vm = private_copy(view.vms[vm_name])
    vm.observe_images([facts for path, facts in measured.items() if path in vm.images])
    return replacing(view, vm)


def vm_space(
    view: LedgerView,
    vm_name: str,
    measured: Mapping[str, ImageFacts],
    cost: CostModel | None = None,
    dependants: Mapping[str, Sequence[str]] | None = None,
    notes: Sequence[str] = (),
    blocking: Mapping[str, str] | None = None,
) -> VmSpace:
    """`measured`: path -> the facts read on the disk now, for the images that could be read;
    every other image of the VM counts as the ledger last recorded it. `blocking`: images a
    delete would be refused on now (drift, another name, unreadable; the check a command makes
    before it records), with why: a snapshot whose delete touches one frees nothing now."""
    blocking = blocking or {}
    view = with_measured(view, vm_name, measured)
    vm = view.vms[vm_name]
    dag = ImageDag(view, home=vm.home)
    images = []
    for path, record in sorted(vm.images.items()):
        if record.missing:
            continue  # recorded gone by reconcile: nothing on the disk
        node = dag.node(path)
        owner = node.owner if node is not None else owner_class({vm_name}, {record.origin})
        images.append(ImageSpace(
            path, owner, record.facts.allocated, record.facts.size, path in measured
        ))
    snapshots = []
    for snap in sorted(vm.snapshots.values(), key=lambda s: (s.created, s.name)):
        allocated = frozen_allocated(vm.images, snap.disks)
        try:
            plan = plan_delete(
                view, vm_name, snap.name, Strategy.AUTO, BranchOption.FORBID, cost, dependants
            )
        except SnapledgerError as refused:
            snapshots.append(SnapshotSpace(snap.name, allocated, None, None, str(refused)))
            continue
        touched = {p for step in plan.steps for p in (*touched_paths(step), *_deleted(step))}
        if blocked := sorted(touched & set(blocking)):
            why = "the disk disagrees with the ledger: " + "; ".join(blocking[p] for p in blocked)
            snapshots.append(SnapshotSpace(snap.name, allocated, None, None, why))
            continue
        freed = bytes_freed(view, vm_name, plan)
        snapshots.append(SnapshotSpace(snap.name, allocated, freed, plan.bytes_moved))
    return VmSpace(vm_name, vm.home or None, tuple(snapshots), tuple(images), tuple(notes))


def _deleted(step: Step) -> tuple[str, ...]:
    return (step.path,) if isinstance(step, DeleteFile) else ()
