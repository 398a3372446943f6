"""The snapshot tree of one VM and a per-image account of why it is kept: read models for
`tree`, `show` and `explain`, derived from a LedgerView alone."""

from __future__ import annotations

from dataclasses import dataclass

from snapledger.domain.images import OwnerClass

from .dag import ImageDag
from .sizes import frozen_allocated
from .view import LedgerView


@dataclass(frozen=True)
class SnapshotNode:
    name: str
    parent: str | None
    children: tuple[str, ...]
    frozen: dict[str, str]  # disk -> frozen image
    current: bool
    allocated: int = 0  # bytes allocated in its frozen images, as recorded (sizes.py)
    description: str | None = None
    created: str | None = None


@dataclass(frozen=True)
class SnapshotTree:
    vm: str
    current: str | None
    nodes: dict[str, SnapshotNode]
    roots: tuple[str, ...]
    present: dict[str, str]  # disk -> active image

    def branches(self) -> list[tuple[str, ...]]:
        """Every history from a root snapshot to a leaf; the present hangs below `current`."""
        out: list[tuple[str, ...]] = []
        stack: list[tuple[str, ...]] = [(root,) for root in reversed(self.roots)]
        while stack:
            path = stack.pop()
            children = self.nodes[path[-1]].children
            if not children:
                out.append(path)
            stack.extend(path + (child,) for child in reversed(children))
        return out


def snapshot_tree(view: LedgerView, vm_name: str) -> SnapshotTree:
    vm = view.vm(vm_name)
    children: dict[str | None, list[str]] = {}
    for snap in vm.snapshots.values():
        children.setdefault(snap.parent, []).append(snap.name)
    nodes = {
        snap.name: SnapshotNode(
            snap.name,
            snap.parent,
            tuple(sorted(children.get(snap.name, []))),
            dict(snap.disks),
            snap.name == vm.current,
            frozen_allocated(vm.images, snap.disks),
            snap.description,
            snap.created,
        )
        for snap in vm.snapshots.values()
    }
    return SnapshotTree(
        vm_name, vm.current, nodes, tuple(sorted(children.get(None, []))), dict(vm.disks)
    )


@dataclass(frozen=True)
class ImageReport:
    """Why an image is kept, and what may be done with it."""

    path: str
    owner: OwnerClass
    vms: tuple[str, ...]
    needed_because: tuple[str, ...]
    may_delete: bool
    may_write: bool
    backing: str | None
    children: tuple[str, ...]


def image_report(view: LedgerView, path: str, dag: ImageDag | None = None) -> ImageReport:
    dag = dag or ImageDag(view)
    node = dag.nodes[path]
    writer = node.vms[0] if len(node.vms) == 1 else ""
    return ImageReport(
        path,
        node.owner,
        node.vms,
        tuple(need.describe() for need in node.needs),
        node.may_delete,
        bool(writer) and node.owner is not OwnerClass.READ_ONLY and dag.may_write(path, writer)
        and not dag.needed_children(path),
        node.facts.backing,
        tuple(dag.children.get(path, [])),
    )
