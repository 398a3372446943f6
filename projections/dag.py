"""The image DAG across all VMs, and for each image: owner class, what needs it, what may be done.

Derived entirely from a LedgerView; nothing here is stored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from snapledger.domain.images import ImageFacts, ImageRecord, Origin, OwnerClass
from snapledger.domain.steps import CreateOverlay, touched_paths
from snapledger.domain.vm import VirtualMachine

from .dag_index import index_of
from .scope import in_scope, is_shared, registration_scope, shared_dirs
from .view import LedgerView


class NeedKind(StrEnum):
    """Why an image stays (an enum: compared by identity, printed as its value)."""

    ACTIVE = "active"  # a disk of a VM writes it; detail: the disk
    FROZEN = "frozen"  # a snapshot holds it; detail: the snapshot
    DETACHED = "detached"  # kept for its VM until discarded; detail: the image
    OPERATION = "operation"  # an unfinished operation uses it; detail: its id
    DEPENDANT = "dependant"  # a file the ledger does not know rests on it; detail: that file
    ELSEWHERE = "elsewhere"  # a VM of another host holds it; detail: that host
    BELOW = "below"  # a needed image rests on it; detail: the image above


@dataclass(frozen=True)
class Need:
    """One reason an image needs to stay."""

    kind: NeedKind
    vm: str
    detail: str  # the disk, snapshot, operation id, the unknown file, or the image above

    def describe(self) -> str:
        return {
            NeedKind.ACTIVE: f"active image of {self.vm}/{self.detail}",
            NeedKind.FROZEN: f"holds snapshot {self.detail} of {self.vm}",
            NeedKind.DETACHED: f"detached from {self.vm}/{self.detail}, kept until discarded",
            NeedKind.OPERATION: f"in use by unfinished operation {self.detail} of {self.vm}",
            NeedKind.DEPENDANT: f"{self.detail} depends on it (a file the ledger does not know)",
            NeedKind.ELSEWHERE: f"held by {self.vm}, which lives on host {self.detail}",
            NeedKind.BELOW: f"backing file of {self.detail}",
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
        return [n for n in self.needs if n.kind is not NeedKind.BELOW]


def owner_class(users: set[str], origins: set[Origin]) -> OwnerClass:
    """Read-only if two or more VMs use it or it was found below an adopted disk; else adopted
    if any holder adopted it; else managed (semantics.md, "Who owns an image")."""
    if len(users) > 1 or Origin.FOUND in origins:
        return OwnerClass.READ_ONLY
    if Origin.ADOPTED in origins:
        return OwnerClass.ADOPTED
    return OwnerClass.MANAGED


class ImageDag:
    """Nodes are images, edges point from an image to its backing file.

    `dependants` are the world's part: for an image, the files the ledger does not know whose
    backing chain reaches it (a user's own overlays, found by a storage scan). Each makes the
    image need to stay, and so everything below it.

    `home`: the host whose view this is (scope.py): the images of the VMs living there, and the
    images other hosts' VMs hold on shared storage, each of which needs to stay (`elsewhere`).
    None: every image of the ledger, as on one host.

    Read lazily (issue 13): a node is made when asked for, from the VMs holding the image and
    each VM's index of children and frozen images (dag_index.py), so a planner pays for the
    images it touches. An image is needed if something holds it directly or an image resting on
    it is needed; that is found by walking up from it, and remembered."""

    def __init__(
        self,
        view: LedgerView,
        ignore_detached_of: str | None = None,
        dependants: Mapping[str, Sequence[str]] | None = None,
        home: str | None = None,
    ) -> None:
        self._view = view
        self._ignore_detached_of = ignore_detached_of
        self._dependants = dependants if dependants is not None else {}  # not bool(): that reads them all
        self._shared = shared_dirs(view)
        self._live = list(view.live_vms().values())  # a retired VM holds nothing
        self._local = {vm.name for vm in self._live if in_scope(vm, home)}
        self._home = home
        self._operation_needs = self._operations()
        self._held: dict[str, list[tuple[VirtualMachine, ImageRecord]]] = {}
        self._every_path_held = False
        self._nodes: dict[str, ImageNode | None] = {}
        self._facts: dict[str, ImageFacts | None] = {}
        self._direct: dict[str, list[Need]] = {}
        self._needed: dict[str, bool] = {}
        self._children: dict[str, list[str]] = {}
        self.nodes: Mapping[str, ImageNode] = _Nodes(self)
        self.children: Mapping[str, list[str]] = _Children(self)

    def _operations(self) -> dict[str, list[Need]]:
        needs: dict[str, list[Need]] = defaultdict(list)
        for vm in self._live:
            if vm.name in self._local and vm.operation is not None:
                for step in vm.operation.steps[vm.operation.done :]:
                    paths = (step.path,) if isinstance(step, CreateOverlay) else ()
                    for path in paths + touched_paths(step):
                        needs[path].append(Need(NeedKind.OPERATION, vm.name, vm.operation.op_id))
        return needs

    def _holders(self, path: str) -> list[tuple[VirtualMachine, ImageRecord]]:
        """The VMs whose ledger holds `path` in this view, with their records of it."""
        held = self._held.get(path)
        if held is None:
            held = self._held[path] = [] if self._every_path_held else [
                (vm, record) for vm in self._live
                if (record := vm.images.get(path)) is not None
                and (vm.name in self._local or is_shared(path, self._shared))
            ]
        return held

    def paths(self) -> list[str]:
        """Every image of this view (one pass over the VMs, which also answers `_holders`)."""
        if not self._every_path_held:
            held: dict[str, list[tuple[VirtualMachine, ImageRecord]]] = {}
            for vm in self._live:
                local = vm.name in self._local
                for path, record in vm.images.items():
                    if local or is_shared(path, self._shared):
                        held.setdefault(path, []).append((vm, record))
            self._held, self._every_path_held = held, True
        return list(self._held)

    def node(self, path: str) -> ImageNode | None:
        if path in self._nodes:
            return self._nodes[path]
        holders = self._holders(path)
        facts = self.node_facts(path)
        made = None
        if facts is not None:
            users = self._view.users_of(path, registration_scope(path, self._home, self._shared))
            users |= {vm.name for vm, _ in holders}
            owner = owner_class(users, {record.origin for _, record in holders})
            made = ImageNode(
                facts, owner, tuple(sorted(users)), detached=any(r.detached for _, r in holders)
            )
            made.needs.extend(self._direct_needs(path, holders))
            made.needs.extend(Need(NeedKind.BELOW, "", c) for c in self.children_of(path) if self.needed(c))
        self._nodes[path] = made
        return made

    def _direct_needs(self, path: str, holders: list[tuple[VirtualMachine, ImageRecord]]) -> list[Need]:
        if path not in self._direct:
            self._direct[path] = self._needs_held(path, holders)
        return self._direct[path]

    def _needs_held(self, path: str, holders: list[tuple[VirtualMachine, ImageRecord]]) -> list[Need]:
        needs = [Need(NeedKind.ELSEWHERE, vm.name, vm.home) for vm, _ in holders if vm.name not in self._local]
        for vm, record in holders:
            if vm.name not in self._local:
                continue
            needs += [Need(NeedKind.ACTIVE, vm.name, disk) for disk, p in vm.disks.items() if p == path]
            needs += [Need(NeedKind.FROZEN, vm.name, snap) for snap, _ in index_of(vm).frozen.get(path, ())]
            if record.detached and vm.name != self._ignore_detached_of:
                needs.append(Need(NeedKind.DETACHED, vm.name, path))
            needs += [Need(NeedKind.DEPENDANT, vm.name, d) for d in self._dependants.get(path, ())]
        return needs + self._operation_needs.get(path, [])

    def children_of(self, path: str) -> list[str]:
        """The images resting on `path` (their backing file is `path`), sorted."""
        found = self._children.get(path)
        if found is None:
            kids = {c for vm, _ in self._holders(path) for c in index_of(vm).children.get(path, ())}
            found = self._children[path] = sorted(
                c for c in kids if (n := self.node_facts(c)) is not None and n.backing == path
            )
        return found

    def node_facts(self, path: str) -> ImageFacts | None:
        """The facts of `path`'s node, without working out what needs it."""
        if path in self._facts:
            return self._facts[path]
        holders = self._holders(path)
        facts = holders[0][1].facts if holders else None
        for _, record in holders[1:]:
            if record.origin is Origin.MANAGED:
                facts = record.facts  # the VM that made it knows it best
        self._facts[path] = facts
        return facts

    def needed(self, path: str) -> bool:
        """Whether something needs `path` to stay: directly, or an image resting on it does
        (walked upwards without recursion: chains can be long)."""
        known = self._needed.get(path)
        if known is not None:
            return known
        # Depth first over the images above `path`; an image is needed if held directly or if
        # one above it is. Each image is settled once.
        stack: list[tuple[str, list[str]]] = []
        visiting: set[str] = set()  # a loop of backing files (never made by qemu-img) ends here
        current = path
        while True:
            visiting.add(current)
            holders = self._holders(current)
            if holders and self._direct_needs(current, holders):
                self._needed[current] = True
            else:
                pending = [
                    c for c in self.children_of(current)
                    if c not in visiting and (c not in self._needed or self._needed[c])
                ]
                if any(self._needed.get(c) for c in pending):
                    self._needed[current] = True
                elif pending:
                    stack.append((current, pending))
                else:
                    self._needed[current] = False
            # settle what can be settled, then descend into the next child waiting
            while stack:
                top, waiting = stack[-1]
                while waiting and waiting[-1] in self._needed:
                    if self._needed[waiting.pop()]:
                        self._needed[top] = True
                        break
                if self._needed.get(top):
                    stack.pop()
                    continue
                if not waiting:
                    self._needed[top] = False
                    stack.pop()
                    continue
                break
            if not stack:
                return self._needed[path]
            current = stack[-1][1][-1]

    def dependants(self, path: str) -> list[str]:
        """Files the ledger does not know that rest on `path` (as the storage scan found)."""
        return [n.detail for n in self.nodes[path].needs if n.kind is NeedKind.DEPENDANT]

    def needed_children(self, path: str) -> list[str]:
        return [c for c in self.children_of(path) if self.needed(c)]

    def may_write(self, path: str, vm: str, *, ignoring_snapshot: str | None = None) -> bool:
        """May `path` be a commit target for `vm`: owned by it alone and nothing else reads it.

        `ignoring_snapshot`: the snapshot being deleted, whose hold on the image goes away.
        Children are judged by the caller (a commit is only planned with one needed child).
        """
        node = self.nodes[path]
        if node.owner is OwnerClass.READ_ONLY or node.vms != (vm,) or node.detached:
            return False
        return all(
            n.kind is NeedKind.BELOW or (n.kind is NeedKind.FROZEN and n.vm == vm and n.detail == ignoring_snapshot)
            for n in node.needs
        )

    def chain(self, path: str) -> list[str]:
        chain, seen = [path], {path}
        while (facts := self.node_facts(chain[-1])) is not None and facts.backing is not None:
            # a loop ends here: two VMs' records of files rebased by hand can make one
            if facts.backing in seen or self.node_facts(facts.backing) is None:
                break
            chain.append(facts.backing)
            seen.add(facts.backing)
        return chain

    def depth(self, path: str) -> int:
        return len(self.chain(path))


class _Nodes(Mapping[str, ImageNode]):
    """The DAG's nodes by path, each made when first asked for."""

    def __init__(self, dag: ImageDag) -> None:
        self._dag = dag

    def __getitem__(self, path: str) -> ImageNode:
        node = self._dag.node(path)
        if node is None:
            raise KeyError(path)
        return node

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self._dag.node_facts(path) is not None

    def _paths(self) -> list[str]:
        return self._dag.paths()

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths())

    def __len__(self) -> int:
        return len(self._paths())


class _Children(Mapping[str, list[str]]):
    """The images resting on each image, by its path (only images with some)."""

    def __init__(self, dag: ImageDag) -> None:
        self._dag = dag

    def __getitem__(self, path: str) -> list[str]:
        found = self._dag.children_of(path)
        if not found:
            raise KeyError(path)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter([p for p in self._dag.nodes if self._dag.children_of(p)])

    def __len__(self) -> int:
        return sum(1 for _ in self)
