"""Planners: pure functions from the ledger's state to a Plan of steps, or a refusal that says why.

The rules are those of semantics.md; each refusal raises an error of the one hierarchy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from snapledger.domain.errors import (
    BadInput,
    BadPath,
    BranchPointRefused,
    Refused,
    StrategyNotAllowed,
    UnknownDisk,
)
from snapledger.domain.images import OwnerClass
from snapledger.domain.names import revert_overlay_path, snapshot_overlay_path
from snapledger.domain.steps import (
    BranchOption,
    Commit,
    CreateOverlay,
    DeleteFile,
    DetachImage,
    MoveFrozen,
    OperationKind,
    Plan,
    Pull,
    RebaseUnsafe,
    ReleaseImage,
    SetActive,
    Step,
    Strategy,
)
from snapledger.domain.vm import VirtualMachine

from .cost import CostModel
from .dag import ImageDag, NeedKind
from .dag_index import index_of
from .leftovers import plan_gc as plan_gc
from .leftovers import rests_on_managed, with_leftovers_first
from .scope import in_scope, is_shared, registration_scope, shared_dirs
from .view import LedgerView

PathTaken = Callable[[str], bool]
# image -> files the ledger does not know whose backing chain reaches it (a storage scan's answer)
Dependants = Mapping[str, Sequence[str]]
STRATEGIES = tuple(Strategy)
BRANCH_OPTIONS = tuple(BranchOption)


def _vm(view: LedgerView, name: str) -> VirtualMachine:
    vm = view.vm(name)
    vm.check_tracked()
    return vm


def _overlay_for(
    disk: str, default: str, overlays: Mapping[str, str], taken: PathTaken
) -> str:
    path = overlays.get(disk, default)
    if taken(path):
        hint = "" if disk in overlays else f"; choose another with --overlay {disk}=PATH"
        raise BadPath(f"overlay {path} exists or was used before in this ledger{hint}")
    return path


def _check_overlay_disks(vm: VirtualMachine, disks: list[str], overlays: Mapping[str, str]) -> None:
    for disk in overlays:
        if disk not in vm.disks:
            raise UnknownDisk(f"VM {vm.name!r} has no disk {disk!r}")
        if disk not in disks:
            raise BadInput(f"--overlay names disk {disk!r}, which is not captured")
    chosen = [overlays[d] for d in overlays]
    if len(set(chosen)) != len(chosen):
        raise BadPath("two disks were given the same overlay path")


def plan_snapshot(
    view: LedgerView,
    vm_name: str,
    name: str,
    taken: PathTaken,
    overlays: Mapping[str, str] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> Plan:
    """Per captured disk: a new managed overlay over the active image, which then freezes."""
    vm = _vm(view, vm_name)
    vm.check_idle()
    vm.check_new_snapshot_name(name)
    for disk in exclude:
        vm.check_disk(disk)
    disks = sorted(d for d in vm.disks if d not in exclude)
    if not disks:
        raise BadInput("every disk is excluded: a snapshot must capture at least one disk")
    overlays = dict(overlays or {})
    _check_overlay_disks(vm, disks, overlays)
    creates: list[Step] = []
    activations: list[Step] = []
    new_paths: set[str] = set()
    for disk in disks:
        if vm.images[vm.disks[disk]].missing:
            raise Refused(
                f"the active image of {disk}, {vm.disks[disk]}, is gone (reconcile recorded it): "
                f"put another in place with 'snapledger swap-disk {vm.name} {disk} PATH'"
            )
        active = vm.images[vm.disks[disk]].facts
        path = _overlay_for(disk, snapshot_overlay_path(active.path, name), overlays, taken)
        if path in new_paths:
            raise BadPath(f"two disks would get the same overlay {path}; use --overlay")
        new_paths.add(path)
        creates.append(CreateOverlay(path, active.path, active.format, active.virtual_size))
        activations.append(SetActive(disk, path))
    return Plan(OperationKind.SNAPSHOT, tuple(creates + activations), "new overlay per captured disk")


def plan_revert(
    view: LedgerView,
    vm_name: str,
    name: str,
    taken: PathTaken,
    overlays: Mapping[str, str] | None = None,
    dependants: Dependants | None = None,
) -> Plan:
    """New overlays over the snapshot's frozen images; the abandoned present goes if nothing
    needs it. A present that files the ledger does not know rest on is kept, detached."""
    vm = _vm(view, vm_name)
    vm.check_idle()
    snap = vm.snapshot(name)
    broken = vm.broken_snapshots().get(name)
    if broken:
        raise Refused(
            f"snapshot {name!r} is broken: an image of {', '.join(broken)} is gone (reconcile "
            "recorded it), so it can't be reverted to; delete it to let it go"
        )
    disks = sorted(snap.disks)
    overlays = dict(overlays or {})
    _check_overlay_disks(vm, disks, overlays)
    dag = ImageDag(view, dependants=dependants, home=vm.home)
    creates: list[Step] = []
    activations: list[Step] = []
    deletions: list[Step] = []
    new_paths: set[str] = set()
    notes: list[str] = []
    for disk in disks:
        frozen = dag.nodes[snap.disks[disk]].facts
        path = _overlay_for(
            disk,
            revert_overlay_path(frozen.path, name, lambda p: taken(p) or p in new_paths),
            overlays,
            taken,
        )
        new_paths.add(path)
        creates.append(CreateOverlay(path, frozen.path, frozen.format, frozen.virtual_size))
        activations.append(SetActive(disk, path))
        abandoned = dag.nodes[vm.disks[disk]]
        others = [n for n in abandoned.needs if not (n.kind is NeedKind.ACTIVE and n.vm == vm.name and n.detail == disk)]
        unknown = dag.dependants(abandoned.facts.path)
        if abandoned.owner is OwnerClass.MANAGED and not others:
            deletions.append(DeleteFile(abandoned.facts.path))
        elif unknown:
            # Kept for them, and tracked (detached), so that nothing below it is let go either.
            if not abandoned.detached:
                activations.append(DetachImage(abandoned.facts.path))
            notes.append(
                f"{disk}: abandoned present {abandoned.facts.path} is kept as detached: "
                f"{', '.join(unknown)} rests on it (a file the ledger does not know)"
            )
        elif others:
            why = "; ".join(n.describe() for n in others)
            notes.append(f"{disk}: abandoned present {abandoned.facts.path} is kept ({why})")
        else:
            # A user's own file is never deleted; detached, it keeps its chain until discarded.
            activations.append(DetachImage(abandoned.facts.path))
            notes.append(
                f"{disk}: abandoned present {abandoned.facts.path} is {abandoned.owner.value}: "
                "kept as detached (gc --include-detached discards it)"
            )
    steps = with_leftovers_first(dag, vm, creates + activations + deletions)
    return Plan(OperationKind.REVERT, steps, f"revert to {name}", tuple(notes))


def check_new_disk_chain(
    view: LedgerView, vm_name: str, chain: list[str], replacing: str | None = None,
    home: str | None = None, also_shared: Sequence[str] = (),
) -> None:
    """A disk a VM starts using (adopt, swap-disk) must not be another VM's image, and nothing in
    its chain may be an image some VM writes: the new disk would change whenever that VM writes.
    `replacing` is the active image a swap takes out of use (it may lie below the new one).
    `home`: the host the VM lives on; other hosts' files at the same local paths are not its.
    `also_shared`: shared directories the VM declares that the ledger does not know yet."""
    shared = tuple(sorted({*shared_dirs(view), *also_shared}))
    others = view.users_of(chain[0], registration_scope(chain[0], home, shared)) - {vm_name}
    if others:
        raise Refused(
            f"{chain[0]} is used by VM {', '.join(sorted(others))}; put an overlay over it instead"
        )
    for other in view.live_vms().values():
        for disk, active in other.disks.items():
            if not in_scope(other, home) and not is_shared(active, shared):
                continue  # another host's own file, whatever its path here
            if active in chain[1:] and not (other.name == vm_name and active == replacing):
                raise Refused(
                    f"{chain[0]} is backed by {active}, the active image of {other.name}/{disk}, "
                    "which that VM keeps writing"
                )


def plan_swap(view: LedgerView, vm_name: str, disk: str, chain: list[str]) -> Plan:
    """Recording a swap moves no data: the plan is the change of active image, checked.

    `chain` is the new image's backing chain as the storage adapter read it, new image first.
    The VM's own rules (idle, known disk, not a frozen image) are the aggregate's to check."""
    vm = _vm(view, vm_name)
    check_new_disk_chain(view, vm_name, chain, replacing=vm.disks.get(disk), home=vm.home)
    return Plan(OperationKind.SWAP, (SetActive(disk, chain[0]),), "record the image the user put in place")


@dataclass(frozen=True)
class _DiskMerge:
    steps: tuple[Step, ...]
    strategy: str


def plan_delete(
    view: LedgerView,
    vm_name: str,
    name: str,
    strategy: str = Strategy.AUTO,
    branches: str = BranchOption.FORBID,
    cost: CostModel | None = None,
    dependants: Dependants | None = None,
) -> Plan:
    """Per disk of the snapshot, the cheapest safe way to let its frozen image go (semantics.md).
    A disk whose frozen image or merge partner files the ledger does not know rest on is left
    as it is on disk: only the snapshot's metadata goes."""
    if strategy not in STRATEGIES:
        raise BadInput(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if branches not in BRANCH_OPTIONS:
        raise BadInput(f"unknown branches option {branches!r}: use one of {', '.join(BRANCH_OPTIONS)}")
    strategy, branches = Strategy(strategy), BranchOption(branches)
    cost = cost or CostModel()
    vm = _vm(view, vm_name)
    vm.check_idle()
    snap = vm.snapshot(name)
    dag = ImageDag(view, dependants=dependants, home=vm.home)
    steps: list[Step] = []
    ways: list[str] = []
    for disk in sorted(snap.disks):
        merge = _plan_disk_delete(view, dag, vm, name, disk, strategy, branches, cost)
        steps.extend(merge.steps)
        ways.append(f"{disk}: {merge.strategy}")
    return Plan(OperationKind.DELETE, with_leftovers_first(dag, vm, steps), "; ".join(ways))


def _plan_disk_delete(
    view: LedgerView,
    dag: ImageDag,
    vm: VirtualMachine,
    snapshot: str,
    disk: str,
    strategy: str,
    branches: str,
    cost: CostModel,
) -> _DiskMerge:
    frozen_path = vm.snapshots[snapshot].disks[disk]
    frozen = dag.nodes[frozen_path]
    kept = dag.needed_children(frozen_path)
    forced = strategy is not Strategy.AUTO
    other_holds = [
        n for n in frozen.direct_needs if not (n.kind is NeedKind.FROZEN and n.vm == vm.name and n.detail == snapshot)
    ]

    def metadata_only(why: str) -> _DiskMerge:
        if forced and len(kept) == 1:
            raise StrategyNotAllowed(f"--strategy {strategy} is not possible for {disk}: {why}")
        return _DiskMerge((), f"metadata only ({why}); {frozen_path} stays")

    if other_holds:
        return metadata_only("; ".join(n.describe() for n in other_holds))
    gone = [p for p in [frozen_path, *kept, *dag.chain(frozen_path)] if vm.images.get(p) is not None
            and vm.images[p].missing] if vm.missing_images() else []
    if gone:  # a broken snapshot (reconcile recorded a file gone): nothing on disk can move
        return metadata_only(f"{', '.join(dict.fromkeys(gone))} is gone")
    if frozen.owner is OwnerClass.READ_ONLY:
        return metadata_only(f"{frozen_path} is read-only")
    detached = [c for c in kept if dag.nodes[c].detached]
    if detached:
        return metadata_only(f"{', '.join(detached)} is detached")
    if not kept:
        if frozen.owner is OwnerClass.MANAGED:
            return _DiskMerge((DeleteFile(frozen_path),), f"{frozen_path} is not needed: deleted")
        if rests_on_managed(dag, frozen_path):
            return _DiskMerge(
                (DetachImage(frozen_path),),
                f"{frozen_path} is {frozen.owner.value} and rests on managed images: kept as detached",
            )
        return _DiskMerge((ReleaseImage(frozen_path),), f"{frozen_path} is {frozen.owner.value}: released, left on disk")
    if len(kept) > 1:
        if forced:
            raise StrategyNotAllowed(
                f"--strategy {strategy} is for a snapshot with one child; {frozen_path} ({disk}) "
                f"has {len(kept)} branches: use --branches pull or --branches keep"
            )
        return _plan_branch_point(dag, vm, disk, frozen_path, kept, branches, cost)
    unknown = [f"{d} rests on {c}" for c in kept for d in dag.dependants(c)]
    if unknown:  # a merge would delete or rewrite a file they read through
        return metadata_only(f"{'; '.join(unknown)} (a file the ledger does not know)")

    child_path = kept[0]
    child = dag.nodes[child_path]
    options: dict[str, tuple[Step, ...]] = {}
    refusals: dict[str, str] = {}
    if child.owner is not OwnerClass.MANAGED:
        refusals["commit"] = refusals["pull"] = f"{child_path} is {child.owner.value}, not managed"
    else:
        # A commit re-points the child's own children; only files snapledger made may be rewritten.
        unowned = [
            c for c in dag.children.get(child_path, []) if dag.nodes[c].owner is not OwnerClass.MANAGED
        ]
        if not dag.may_write(frozen_path, vm.name, ignoring_snapshot=snapshot):
            refusals["commit"] = f"{frozen_path} may not be written"
        elif unowned:
            refusals["commit"] = f"{', '.join(unowned)} is backed by {child_path} and is not managed"
        else:
            options["commit"] = _commit_steps(dag, vm, frozen_path, child_path)
        if frozen.owner is OwnerClass.MANAGED:
            options["pull"] = (_pull_step(dag, child_path, frozen_path, cost), DeleteFile(frozen_path))
        else:
            refusals["pull"] = f"{frozen_path} is {frozen.owner.value} and can't be deleted"
    if forced:
        if strategy not in options:
            raise StrategyNotAllowed(f"--strategy {strategy} is not possible for {disk}: {refusals[strategy]}")
        return _DiskMerge(options[strategy], f"{strategy} (forced)")
    if not options:
        return metadata_only(refusals["commit"])
    chosen = min(options, key=lambda way: (cost.total(options[way]), way))
    # the bytes each way moves are in its steps (and `explain`); the text says what was chosen
    others = sorted(set(options) - {chosen})
    return _DiskMerge(options[chosen], f"{chosen}, cheaper than {' or '.join(others)}" if others else chosen)


def _commit_steps(dag: ImageDag, vm: VirtualMachine, base: str, top: str) -> tuple[Step, ...]:
    """Commit `top` into `base`; `base` takes over `top`'s role, `top` goes."""
    base_format = dag.nodes[base].facts.format
    steps: list[Step] = [Commit(top, base, dag.nodes[top].facts.allocated)]
    steps += [RebaseUnsafe(child, base, base_format) for child in dag.children.get(top, [])]
    steps += [SetActive(disk, base) for disk, path in sorted(vm.disks.items()) if path == top]
    steps += [MoveFrozen(snap, disk, base) for snap, disk in index_of(vm).frozen.get(top, ())]
    steps.append(DeleteFile(top))
    return tuple(steps)


def _pull_step(dag: ImageDag, image: str, frozen: str, cost: CostModel) -> Pull:
    """Pull `frozen`'s data into `image`, which then backs onto `frozen`'s own backing."""
    below = dag.nodes[frozen].facts
    return Pull(
        image,
        below.backing,
        below.backing_format,
        bytes=below.allocated,
        scanned_bytes=dag.nodes[image].facts.virtual_size,
    )


def _plan_branch_point(
    dag: ImageDag,
    vm: VirtualMachine,
    disk: str,
    frozen_path: str,
    kept: list[str],
    branches: str,
    cost: CostModel,
) -> _DiskMerge:
    frozen = dag.nodes[frozen_path]
    if frozen.owner is not OwnerClass.MANAGED:
        return _DiskMerge((), f"metadata only: {frozen_path} is {frozen.owner.value} and stays as the shared base")
    if branches is BranchOption.KEEP:
        return _DiskMerge((), f"metadata only (--branches keep): {frozen_path} stays as the shared base")
    if branches is BranchOption.FORBID:
        described = ", ".join(_describe_branch(dag, c) for c in kept)
        raise BranchPointRefused(
            f"{frozen_path} ({disk}) is the base of {len(kept)} branches ({described}); "
            "use --branches pull to copy it into every branch, or --branches keep to keep it as their shared base"
        )
    unknown = [f"{d} rests on {c}" for c in kept for d in dag.dependants(c)]
    if unknown:  # pulling into a branch would rewrite a file they read through
        return _DiskMerge((), f"metadata only ({'; '.join(unknown)}, a file the ledger does not "
                              f"know): {frozen_path} stays as the shared base")
    unmanaged = [c for c in kept if dag.nodes[c].owner is not OwnerClass.MANAGED]
    if unmanaged:
        raise StrategyNotAllowed(
            f"--branches pull can't write {', '.join(unmanaged)}: not managed; use --branches keep"
        )
    pulls = tuple(_pull_step(dag, c, frozen_path, cost) for c in kept)
    return _DiskMerge(pulls + (DeleteFile(frozen_path),), f"pull into {len(kept)} branches")


def _describe_branch(dag: ImageDag, path: str) -> str:
    holds = [n.describe() for n in dag.nodes[path].direct_needs]
    return f"{path}: {holds[0]}" if holds else path
