"""`explain VM PATH`: why an image is kept, what may be done with it, and what would free it.

A pure projection over a LedgerView. Every judgement comes from the ImageDag (owner class, the
reasons an image needs to stay, may_write, may_delete) or from the planners themselves: "which
deletions would free it" is answered by asking `plan_delete` (and `plan_revert`, `plan_gc`) what
they would do, never by re-deriving their rules here. A route of several commands is checked by
applying each plan to a copy of the VM aggregate with the aggregate's own methods, so the next
plan sees exactly the state the ledger would be in.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from snapledger.domain.errors import UnknownImage
from snapledger.domain.images import Origin, OwnerClass
from snapledger.domain.steps import Commit
from snapledger.domain.vm import VirtualMachine

from .cost import CostModel
from .dag import ImageDag, Need, NeedKind
from .freeing import delete_command, freeing, try_plan
from .holds import Hold, Route, read_only_because, resting_on
from .planners import plan_delete
from .tree import image_report
from .view import LedgerView


@dataclass(frozen=True)
class Explanation:
    vm: str
    path: str
    owner: OwnerClass
    origin: Origin  # how this VM's ledger came to hold it
    owner_reason: str
    read_only_because: tuple[str, ...]
    state: tuple[str, ...]  # active | frozen | detached | operation | backing | unneeded, branch-point
    vms: tuple[str, ...]  # VMs using it
    backing: str | None
    chain: tuple[str, ...]  # the image, then its backing chain down
    children: tuple[tuple[str, bool, bool], ...]  # (path, needed, detached)
    needs: tuple[Need, ...]  # the DAG's reasons, direct and `below`
    frozen_by: tuple[tuple[str, str, str], ...]  # (vm, snapshot, disk)
    resting_on_it: tuple[Hold, ...]  # holds of the images above it
    branches: tuple[str, ...]  # needed children, when there are two or more
    may_write: bool
    write_reasons: tuple[str, ...]
    may_delete: bool
    delete_reason: str
    freed_by: tuple[Route, ...]
    nothing_frees_it: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "path": self.path,
            "owner": self.owner.value,
            "origin": self.origin.value,
            "owner_reason": self.owner_reason,
            "read_only_because": list(self.read_only_because),
            "state": list(self.state),
            "vms": list(self.vms),
            "backing": self.backing,
            "chain": list(self.chain),
            "children": [
                {"path": p, "needed": needed, "detached": detached}
                for p, needed, detached in self.children
            ],
            "needs": [
                {"kind": n.kind.value, "vm": n.vm or None, "detail": n.detail, "text": n.describe()}
                for n in self.needs
            ],
            "frozen_by": [
                {"vm": vm, "snapshot": snap, "disk": disk} for vm, snap, disk in self.frozen_by
            ],
            "resting_on_it": [h.to_json() for h in self.resting_on_it],
            "branches": list(self.branches),
            "may_write": self.may_write,
            "write_reasons": list(self.write_reasons),
            "may_delete": self.may_delete,
            "delete_reason": self.delete_reason,
            "freed_by": [r.to_json() for r in self.freed_by],
            "nothing_frees_it": self.nothing_frees_it,
        }


def explain_image(
    view: LedgerView,
    vm_name: str,
    path: str,
    cost: CostModel | None = None,
    dependants: Mapping[str, Sequence[str]] | None = None,
) -> Explanation:
    """Everything that keeps `path` (an image `vm_name` holds) and what would free it.
    `dependants`: files the ledger does not know that rest on its images (a storage scan)."""
    vm = _held(view, vm_name, path)
    dag = ImageDag(view, dependants=dependants, home=vm.home)
    node = dag.nodes[path]
    report = image_report(view, path, dag)
    frozen_by = _frozen_by(view, node.vms, path)
    resting = resting_on(dag, path)
    needed_children = dag.needed_children(path)
    state = _state(dag, path)
    cost = cost or CostModel()
    routes, nothing = freeing(view, dag, vm, path, cost)
    return Explanation(
        vm=vm_name,
        path=path,
        owner=node.owner,
        origin=vm.images[path].origin,
        owner_reason=_owner_reason(view, node.owner, node.vms, path),
        read_only_because=read_only_because(view, node.owner, node.vms, path),
        state=state,
        vms=node.vms,
        backing=node.facts.backing,
        chain=tuple(dag.chain(path)),
        children=tuple(
            (c, dag.nodes[c].needed, dag.nodes[c].detached) for c in dag.children.get(path, [])
        ),
        needs=tuple(node.needs),
        frozen_by=frozen_by,
        resting_on_it=resting,
        branches=tuple(needed_children) if len(needed_children) > 1 else (),
        may_write=report.may_write,
        write_reasons=_write_reasons(
            view, dag, vm_name, path, report.may_write, needed_children, cost
        ),
        may_delete=report.may_delete,
        delete_reason=_delete_reason(dag, vm_name, path),
        freed_by=routes,
        nothing_frees_it=nothing,
    )


# ---- what it is ------------------------------------------------------------------------------


def _held(view: LedgerView, vm_name: str, path: str) -> VirtualMachine:
    vm = view.vm(vm_name)
    if path in vm.images:
        return vm
    holders = sorted(v.name for v in view.vms.values() if path in v.images)
    if holders:
        raise UnknownImage(f"VM {vm_name!r} holds no image {path}; it is held by {', '.join(holders)}")
    if any(vm_name in r.former_users for r in view.registrations_of(path, vm.home or None)):
        raise UnknownImage(
            f"VM {vm_name!r} no longer holds {path} (deleted or released; see 'snapledger log {vm_name}')"
        )
    same_name = sorted(
        p for p in vm.images if posixpath.basename(p) == posixpath.basename(path)
    )
    hint = f"; did you mean {same_name[0]}?" if same_name else ""
    raise UnknownImage(f"VM {vm_name!r} holds no image {path}{hint}")


def _owner_reason(view: LedgerView, owner: OwnerClass, vms: tuple[str, ...], path: str) -> str:
    if owner is OwnerClass.MANAGED:
        return "an overlay snapledger created"
    if owner is OwnerClass.ADOPTED:
        return "the user's own file (a disk at adopt, or an image swapped in)"
    return "read-only (" + "; ".join(read_only_because(view, owner, vms, path)) + ")"


def _state(dag: ImageDag, path: str) -> tuple[str, ...]:
    node = dag.nodes[path]
    kinds = {n.kind for n in node.direct_needs}
    state: list[str] = [kind.value for kind in (NeedKind.ACTIVE, NeedKind.FROZEN) if kind in kinds]
    if node.detached:
        state.append("detached")
    if NeedKind.OPERATION in kinds:
        state.append("operation")
    if not state:
        state.append("backing" if node.needs else "unneeded")
    if len(dag.needed_children(path)) > 1:
        state.append("branch-point")
    return tuple(state)


def _frozen_by(
    view: LedgerView, vms: tuple[str, ...], path: str
) -> tuple[tuple[str, str, str], ...]:
    out = []
    for name in vms:
        vm = view.vms.get(name)
        if vm is None:
            continue
        for snap in sorted(vm.snapshots.values(), key=lambda s: (s.created, s.name)):
            for disk, frozen in sorted(snap.disks.items()):
                if frozen == path:
                    out.append((name, snap.name, disk))
    return tuple(out)


# ---- what may be done --------------------------------------------------------------------------


def _write_reasons(
    view: LedgerView,
    dag: ImageDag,
    vm: str,
    path: str,
    may_write: bool,
    needed_children: list[str],
    cost: CostModel,
) -> tuple[str, ...]:
    node = dag.nodes[path]
    if may_write:
        return (f"{node.owner.value}, held by {vm} alone, and nothing else reads it: a commit may write it",)
    if node.owner is OwnerClass.READ_ONLY:
        return ("read-only: snapledger never writes it",)
    reasons = []
    if node.vms != (vm,):
        reasons.append(f"used by VMs {', '.join(node.vms)}")
    if node.detached:
        reasons.append("detached: kept as it is until discarded")
    for need in node.direct_needs:
        if need.kind is NeedKind.ACTIVE:
            reasons.append(f"{need.describe()}: the guest writes it, nothing commits into it")
        elif need.kind is NeedKind.FROZEN:
            reasons.append(f"{need.describe()}: writing it would change that snapshot")
        elif need.kind is NeedKind.OPERATION:
            reasons.append(need.describe())
    if len(needed_children) > 1:
        reasons.append(f"{len(needed_children)} branches rest on it: {', '.join(needed_children)}")
    elif needed_children:
        reasons.append(f"{needed_children[0]} rests on it")
    for snapshot in sorted({n.detail for n in node.direct_needs if n.kind is NeedKind.FROZEN and n.vm == vm}):
        commit = try_plan(plan_delete, view, vm, snapshot, "commit", "forbid", cost)
        targets = [s.top for s in commit.steps if isinstance(s, Commit) and s.base == path] if commit else []
        if targets:
            reasons.append(
                f"deleting snapshot {snapshot} may commit {targets[0]} into it "
                f"({delete_command(vm, snapshot, 'commit', 'forbid')})"
            )
    return tuple(reasons) or ("nothing may write it now",)


def _delete_reason(dag: ImageDag, vm: str, path: str) -> str:
    node = dag.nodes[path]
    if node.may_delete:
        return f"nothing needs it: 'snapledger gc {vm}' deletes it"
    if node.owner is OwnerClass.ADOPTED:
        return "never: it is the user's own file (snapledger only releases it)"
    if node.owner is OwnerClass.READ_ONLY:
        return "never: it is read-only"
    return "not while something needs it: " + "; ".join(n.describe() for n in node.needs)


