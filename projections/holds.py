"""What holds an image: each need the ImageDag gives for it or for an image resting on it, as
`explain` shows them, and why a read-only image is read-only."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from snapledger.domain.images import Origin, OwnerClass

from .dag import ImageDag, NeedKind
from .view import LedgerView


@dataclass(frozen=True)
class Hold:
    """Something that needs the image to stay: a reason the DAG gives for the image itself or for
    an image resting on it (above it in a chain)."""

    kind: NeedKind  # frozen, active, detached, operation, dependant or elsewhere
    vm: str
    detail: str  # the snapshot, disk, detached path or operation id
    image: str  # the image that carries the hold
    owner: OwnerClass  # of that image
    text: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "vm": self.vm,
            "detail": self.detail,
            "image": self.image,
            "owner": self.owner.value,
            "text": self.text,
        }


@dataclass(frozen=True)
class Route:
    """Commands that, run in this order, free the image."""

    commands: tuple[str, ...]
    effect: str
    bytes_moved: int

    def to_json(self) -> dict[str, Any]:
        return {"commands": list(self.commands), "effect": self.effect, "bytes_moved": self.bytes_moved}


def origins(view: LedgerView, path: str) -> set[Origin]:
    return {v.images[path].origin for v in view.vms.values() if path in v.images}


def read_only_because(
    view: LedgerView, owner: OwnerClass, vms: tuple[str, ...], path: str
) -> tuple[str, ...]:
    if owner is not OwnerClass.READ_ONLY:
        return ()
    why = []
    if Origin.FOUND in origins(view, path):
        why.append("template: found below an adopted disk")
    if len(vms) > 1:
        why.append(f"shared: in the chain of VMs {', '.join(vms)}")
    return tuple(why)


def above(dag: ImageDag, path: str) -> list[str]:
    """Every image resting on `path` (its children, their children, ...), nearest first."""
    order: list[str] = []
    seen = {path}
    queue = deque(dag.children.get(path, []))
    while queue:
        current = queue.popleft()
        if current in seen:
            continue
        seen.add(current)
        order.append(current)
        queue.extend(dag.children.get(current, []))
    return order


def holds_of(dag: ImageDag, image: str) -> list[Hold]:
    node = dag.nodes[image]
    return [
        Hold(n.kind, n.vm, n.detail, image, node.owner, n.describe()) for n in node.direct_needs
    ]


def resting_on(dag: ImageDag, path: str) -> tuple[Hold, ...]:
    return tuple(hold for image in above(dag, path) for hold in holds_of(dag, image))
