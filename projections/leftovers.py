"""Leftovers: managed images that nothing needs (what interrupted work, or a kept branch base
whose branches went, leaves behind). `gc` deletes them; an operation that deletes the file a
leftover rests on deletes the leftover first, so that no image the ledger holds is left with
a backing file that is gone."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from snapledger.domain.errors import Refused
from snapledger.domain.images import OwnerClass
from snapledger.domain.steps import (
    DeleteFile,
    OperationKind,
    Plan,
    Pull,
    RebaseUnsafe,
    ReleaseImage,
    Step,
)
from snapledger.domain.vm import VirtualMachine

from .dag import ImageDag
from .view import LedgerView

Dependants = Mapping[str, Sequence[str]]


def rests_on_managed(dag: ImageDag, path: str) -> bool:
    """A user's file backed by images snapledger made: forgetting it would let them be deleted
    under it, so it can only be kept (detached), never released."""
    return any(dag.nodes[p].owner is OwnerClass.MANAGED for p in dag.chain(path)[1:])


def resting_on(dag: ImageDag, path: str, repointed: Iterable[str] = ()) -> list[str]:
    """The images whose chain reaches `path`, deepest first, leaving out the subtrees of the
    `repointed` ones (a plan gives them another backing before `path` goes)."""
    skip = set(repointed)
    found: list[tuple[int, str]] = []  # (how far above `path`, image): deeper is further up
    stack = [(1, c) for c in dag.children.get(path, []) if c not in skip]
    while stack:
        height, current = stack.pop()
        found.append((height, current))
        stack.extend((height + 1, c) for c in dag.children.get(current, []) if c not in skip)
    return [p for _, p in sorted(found, key=lambda hp: (-hp[0], hp[1]))]


def with_leftovers_first(dag: ImageDag, vm: VirtualMachine, steps: Sequence[Step]) -> tuple[Step, ...]:
    """`steps`, with each file a DeleteFile would leave without its backing deleted just before
    it (or let go, if reconcile recorded it gone). Only unneeded images of this VM can rest on
    a file a plan deletes; anything else there is a planner's mistake, refused before any step."""
    repointed = {s.image for s in steps if isinstance(s, (Pull, RebaseUnsafe))}
    deleted = {s.path for s in steps if isinstance(s, DeleteFile)}
    swept: list[Step] = []
    for step in steps:
        if isinstance(step, DeleteFile):
            for path in resting_on(dag, step.path, repointed):
                if path in deleted:
                    continue
                node, record = dag.nodes[path], vm.images.get(path)
                if node.needed or record is None or node.owner is not OwnerClass.MANAGED:
                    raise Refused(
                        f"{path} rests on {step.path}, which this plan deletes, and is not a "
                        f"leftover of {vm.name}: nothing was done"
                    )
                swept.append(ReleaseImage(path) if record.missing else DeleteFile(path))
                deleted.add(path)
        swept.append(step)
    return tuple(swept)


def plan_gc(
    view: LedgerView,
    vm_name: str,
    include_detached: bool = False,
    dependants: Dependants | None = None,
) -> Plan:
    """Delete this VM's managed images that nothing needs; forget unneeded ones it does not own.

    A user's file that rests on managed images is never forgotten, and its chain is kept; an
    image a file the ledger does not know rests on is needed, and stays."""
    vm = view.vm(vm_name)
    vm.check_tracked()
    vm.check_idle()
    dag = ImageDag(
        view, ignore_detached_of=vm.name if include_detached else None, dependants=dependants,
        home=vm.home,
    )
    unneeded = [p for p in vm.images if not dag.nodes[p].needed]
    unneeded.sort(key=lambda p: (-dag.depth(p), p))  # children first: nothing dangles mid-way
    kept_user_files = [
        p for p in unneeded if dag.nodes[p].owner is not OwnerClass.MANAGED and rests_on_managed(dag, p)
    ]
    protected = {below for p in kept_user_files for below in dag.chain(p)}
    steps: list[Step] = []
    for path in unneeded:
        if path in protected:
            continue
        if vm.images[path].missing:  # nothing on disk to delete: the ledger lets it go
            steps.append(ReleaseImage(path))
        elif dag.nodes[path].owner is OwnerClass.MANAGED:
            steps.append(DeleteFile(path))
        else:
            steps.append(ReleaseImage(path))
    notes = tuple(
        f"{p} is the user's file and rests on managed images: kept with its chain" for p in kept_user_files
    )
    return Plan(OperationKind.GC, tuple(steps), f"{len(steps)} image{'' if len(steps) == 1 else 's'} nothing needs", notes)
