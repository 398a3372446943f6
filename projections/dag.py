"""The image DAG across all VMs, and for each image: owner class, what needs it, what may be done.

Derived entirely from a LedgerView; nothing here is stored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from snapledger.domain.images import ImageFacts, Origin, OwnerClass
from snapledger.domain.steps import CreateOverlay, touched_paths

from .scope import in_scope, is_shared, registration_scope, shared_dirs
from .view import LedgerView


@dataclass(frozen=True)
class Need:
    """One reason an image needs to stay."""

    kind: str  # active | frozen | detached | operation | dependant | elsewhere | below
    vm: str
    detail: str  # the disk, snapshot, operation id, the unknown file, or the image above

    def describe(self) -> str:
        return {
            "active": f"active image of {self.vm}/{self.detail}",
            "frozen": f"holds snapshot {self.detail} of {self.vm}",
            "detached": f"detached from {self.vm}/{self.detail}, kept until discarded",
            "operation": f"in use by unfinished operation {self.detail} of {self.vm}",
            "dependant": f"{self.detail} depends on it (a file the ledger does not know)",
            "elsewhere": f"held by {self.vm}, which lives on host {self.detail}",
            "below": f"backing file of {self.detail}",
        }[self.kind]


@dataclass
class ImageNode:
    facts: ImageFacts
    owner: OwnerClass
    vms: tuple[str, ...]  # VMs whose ledger holds the image
    needs: list[Need] = field(default_factory=list)
    detached: bool = False

    @property
    def needed(self) -> bool:
        return bool(self.needs)

    @property
    def may_delete(self) -> bool:
        return self.owner is OwnerClass.MANAGED and not self.needs

    @property
    def direct_needs(self) -> list[Need]:
        return [n for n in self.needs if n.kind != "below"]


class ImageDag:
    """Nodes are images, edges point from an image to its backing file.

    `dependants` are the world's part: for an image, the files the ledger does not know whose
    backing chain reaches it (a user's own overlays, found by a storage scan). Each makes the
    image need to stay, and so everything below it.

    `home`: the host whose view this is (scope.py): the images of the VMs living there, and the
    images other hosts' VMs hold on shared storage, each of which needs to stay (`elsewhere`).
    None: every image of the ledger, as on one host."""

    def __init__(
        self,
        view: LedgerView,
        ignore_detached_of: str | None = None,
        dependants: Mapping[str, Sequence[str]] | None = None,
        home: str | None = None,
    ) -> None:
        self.nodes: dict[str, ImageNode] = {}
        self.children: dict[str, list[str]] = defaultdict(list)
        holders: dict[str, list[tuple[str, Origin, bool]]] = defaultdict(list)
        facts: dict[str, ImageFacts] = {}
        shared = shared_dirs(view)
        live = view.live_vms()  # a retired VM holds nothing
        local = {name: vm for name, vm in live.items() if in_scope(vm, home)}
        elsewhere: list[tuple[str, Need]] = []  # other hosts' VMs' holds on shared images
        for vm in live.values():
            for record in vm.images.values():
                if vm.name not in local:
                    if not is_shared(record.path, shared):
                        continue  # another host's own file, whatever its path here
                    elsewhere.append((record.path, Need("elsewhere", vm.name, vm.home)))
                holders[record.path].append((vm.name, record.origin, record.detached))
                if record.path not in facts or record.origin is Origin.MANAGED:
                    facts[record.path] = record.facts
        for path, held in holders.items():
            users = view.users_of(path, registration_scope(path, home, shared))
            users |= {name for name, _, _ in held}
            origins = {origin for _, origin, _ in held}
            if len(users) > 1 or Origin.FOUND in origins:
                owner = OwnerClass.READ_ONLY
            elif Origin.ADOPTED in origins:
                owner = OwnerClass.ADOPTED
            else:
                owner = OwnerClass.MANAGED
            self.nodes[path] = ImageNode(
                facts[path],
                owner,
                tuple(sorted(users)),
                detached=any(d for _, _, d in held),
            )
            backing = facts[path].backing
            if backing is not None:
                self.children[backing].append(path)
        for kids in self.children.values():
            kids.sort()

        roots: list[tuple[str, Need]] = elsewhere
        for vm in local.values():
            for disk, path in vm.disks.items():
                roots.append((path, Need("active", vm.name, disk)))
            for snap in vm.snapshots.values():
                for path in snap.disks.values():
                    roots.append((path, Need("frozen", vm.name, snap.name)))
            for record in vm.images.values():
                if record.detached and vm.name != ignore_detached_of:
                    roots.append((record.path, Need("detached", vm.name, record.path)))
            for path in vm.images:
                for dependant in (dependants or {}).get(path, ()):
                    roots.append((path, Need("dependant", vm.name, dependant)))
            if vm.operation is not None:
                for step in vm.operation.steps[vm.operation.done :]:
                    paths = (step.path,) if isinstance(step, CreateOverlay) else ()
                    for path in paths + touched_paths(step):
                        roots.append((path, Need("operation", vm.name, vm.operation.op_id)))
        for path, need in roots:
            node = self.nodes.get(path)
            if node is None:
                continue
            already = node.needed
            node.needs.append(need)
            if not already:
                self._mark_below(path)

    def _mark_below(self, path: str) -> None:
        """Everything below a needed image is needed (iteratively: chains can be long)."""
        current = path
        while True:
            backing = self.nodes[current].facts.backing
            node = self.nodes.get(backing) if backing is not None else None
            if node is None:
                return
            already = node.needed
            node.needs.append(Need("below", "", current))
            if already:
                return
            current = backing  # type: ignore[assignment]

    def dependants(self, path: str) -> list[str]:
        """Files the ledger does not know that rest on `path` (as the storage scan found)."""
        return [n.detail for n in self.nodes[path].needs if n.kind == "dependant"]

    def needed_children(self, path: str) -> list[str]:
        return [c for c in self.children.get(path, []) if self.nodes[c].needed]

    def may_write(self, path: str, vm: str, *, ignoring_snapshot: str | None = None) -> bool:
        """May `path` be a commit target for `vm`: owned by it alone and nothing else reads it.

        `ignoring_snapshot`: the snapshot being deleted, whose hold on the image goes away.
        Children are judged by the caller (a commit is only planned with one needed child).
        """
        node = self.nodes[path]
        if node.owner is OwnerClass.READ_ONLY or node.vms != (vm,) or node.detached:
            return False
        return all(
            n.kind == "below" or (n.kind == "frozen" and n.vm == vm and n.detail == ignoring_snapshot)
            for n in node.needs
        )

    def chain(self, path: str) -> list[str]:
        chain = [path]
        while (backing := self.nodes[chain[-1]].facts.backing) is not None and backing in self.nodes:
            chain.append(backing)
        return chain

    def depth(self, path: str) -> int:
        return len(self.chain(path))
