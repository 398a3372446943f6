"""`explain VM PATH`: why an image is kept, what may be done with it, and what would free it.

A pure projection over a LedgerView. Every judgement comes from the ImageDag (owner class, the
reasons an image needs to stay, may_write, may_delete) or from the planners themselves: "which
deletions would free it" is answered by asking `plan_delete` (and `plan_revert`, `plan_gc`) what
they would do, never by re-deriving their rules here. A route of several commands is checked by
applying each plan to a copy of the VM aggregate with the aggregate's own methods, so the next
plan sees exactly the state the ledger would be in.
"""

from __future__ import annotations

import copy
import posixpath
import shlex
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from snapledger.domain.errors import SnapledgerError, UnknownImage
from snapledger.domain.images import Origin, OwnerClass
from snapledger.domain.steps import Commit, DeleteFile, Plan, Pull
from snapledger.domain.vm import VirtualMachine

from .cost import CostModel
from .dag import ImageDag, Need
from .planners import plan_delete, plan_gc, plan_revert
from .tree import image_report
from .view import LedgerView, replacing

# Routes of more deletions than this are not simulated (each step copies the VM aggregate).
LONGEST_CHECKED_ROUTE = 32

# (strategy, branches) tried for one `delete`, simplest first: the first that frees it is shown.
DELETE_OPTIONS: tuple[tuple[str, str], ...] = (
    ("auto", "forbid"),
    ("auto", "pull"),
    ("pull", "forbid"),
    ("commit", "forbid"),
)


@dataclass(frozen=True)
class Hold:
    """Something that needs the image to stay: a reason the DAG gives for the image itself or for
    an image resting on it (above it in a chain)."""

    kind: str  # frozen | active | detached | operation
    vm: str
    detail: str  # the snapshot, disk, detached path or operation id
    image: str  # the image that carries the hold
    owner: OwnerClass  # of that image
    text: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
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
                {"kind": n.kind, "vm": n.vm or None, "detail": n.detail, "text": n.describe()}
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
    resting = _resting_on(dag, path)
    needed_children = dag.needed_children(path)
    state = _state(dag, path)
    cost = cost or CostModel()
    routes, nothing = _freeing(view, dag, vm, path, cost)
    return Explanation(
        vm=vm_name,
        path=path,
        owner=node.owner,
        origin=vm.images[path].origin,
        owner_reason=_owner_reason(view, node.owner, node.vms, path),
        read_only_because=_read_only_because(view, node.owner, node.vms, path),
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


def _origins(view: LedgerView, path: str) -> set[Origin]:
    return {v.images[path].origin for v in view.vms.values() if path in v.images}


def _read_only_because(
    view: LedgerView, owner: OwnerClass, vms: tuple[str, ...], path: str
) -> tuple[str, ...]:
    if owner is not OwnerClass.READ_ONLY:
        return ()
    why = []
    if Origin.FOUND in _origins(view, path):
        why.append("template: found below an adopted disk")
    if len(vms) > 1:
        why.append(f"shared: in the chain of VMs {', '.join(vms)}")
    return tuple(why)


def _owner_reason(view: LedgerView, owner: OwnerClass, vms: tuple[str, ...], path: str) -> str:
    if owner is OwnerClass.MANAGED:
        return "an overlay snapledger created"
    if owner is OwnerClass.ADOPTED:
        return "the user's own file (a disk at adopt, or an image swapped in)"
    return "read-only (" + "; ".join(_read_only_because(view, owner, vms, path)) + ")"


def _state(dag: ImageDag, path: str) -> tuple[str, ...]:
    node = dag.nodes[path]
    kinds = {n.kind for n in node.direct_needs}
    state: list[str] = [kind for kind in ("active", "frozen") if kind in kinds]
    if node.detached:
        state.append("detached")
    if "operation" in kinds:
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


def _above(dag: ImageDag, path: str) -> list[str]:
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


def _holds(dag: ImageDag, image: str) -> list[Hold]:
    node = dag.nodes[image]
    return [
        Hold(n.kind, n.vm, n.detail, image, node.owner, n.describe()) for n in node.direct_needs
    ]


def _resting_on(dag: ImageDag, path: str) -> tuple[Hold, ...]:
    return tuple(hold for image in _above(dag, path) for hold in _holds(dag, image))


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
        if need.kind == "active":
            reasons.append(f"{need.describe()}: the guest writes it, nothing commits into it")
        elif need.kind == "frozen":
            reasons.append(f"{need.describe()}: writing it would change that snapshot")
        elif need.kind == "operation":
            reasons.append(need.describe())
    if len(needed_children) > 1:
        reasons.append(f"{len(needed_children)} branches rest on it: {', '.join(needed_children)}")
    elif needed_children:
        reasons.append(f"{needed_children[0]} rests on it")
    for snapshot in sorted({n.detail for n in node.direct_needs if n.kind == "frozen" and n.vm == vm}):
        commit = _try(plan_delete, view, vm, snapshot, "commit", "forbid", cost)
        targets = [s.top for s in commit.steps if isinstance(s, Commit) and s.base == path] if commit else []
        if targets:
            reasons.append(
                f"deleting snapshot {snapshot} may commit {targets[0]} into it "
                f"({_delete_command(vm, snapshot, 'commit', 'forbid')})"
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


# ---- what would free it --------------------------------------------------------------------------


def _delete_command(vm: str, snapshot: str, strategy: str, branches: str) -> str:
    words = ["snapledger", "delete", vm, snapshot]
    if strategy != "auto":
        words += ["--strategy", strategy]
    if branches != "forbid":
        words += ["--branches", branches]
    return shlex.join(words)


def _deletes(plan: Plan, path: str) -> bool:
    return any(isinstance(s, DeleteFile) and s.path == path for s in plan.steps)


def _effect(plan: Plan, path: str) -> str:
    pulled = [s.image for s in plan.steps if isinstance(s, Pull) and s.image != path]
    commits = [s for s in plan.steps if isinstance(s, Commit) and s.top == path]
    if commits:
        return f"committed into {commits[0].base}, which takes over its role; then deleted"
    if pulled:
        return f"pulled into {', '.join(pulled)}; then deleted"
    return "deleted: nothing needs it any more"


def _simulated(view: LedgerView, vm_name: str, target: str | None, plan: Plan) -> LedgerView:
    """The view as it would be once `plan` (a delete or a gc) ran: the VM aggregate's own
    methods applied to a copy, so no rule is re-derived here."""
    vm = copy.deepcopy(view.vms[vm_name])
    op = "explain-simulation"
    vm.start_operation(op, plan.kind, target, plan, [], {"previous_active": dict(vm.disks)}, at="")
    for index in range(len(plan.steps)):
        vm.complete_step(op, index, [])
    vm.close_operation(op, "")
    return replacing(view, vm)


def _try(planner: Callable[..., Plan], *args: Any) -> Plan | None:
    """The planner's plan, or None where it refuses."""
    try:
        return planner(*args)
    except SnapledgerError:
        return None


def _freeing(
    view: LedgerView, dag: ImageDag, vm: VirtualMachine, path: str, cost: CostModel
) -> tuple[tuple[Route, ...], str | None]:
    node = dag.nodes[path]
    name = vm.name
    unknown = dag.dependants(path)
    if unknown:
        return (), (
            f"nothing while {', '.join(unknown)} rest{'s' if len(unknown) == 1 else ''} on it "
            "(files the ledger does not know): snapledger never deletes or changes it before "
            "they are moved away or deleted"
        )
    if node.owner is OwnerClass.ADOPTED:
        return (), "nothing: it is the user's own file, which snapledger never deletes"
    if node.owner is OwnerClass.READ_ONLY:
        why = "; ".join(_read_only_because(view, node.owner, node.vms, path))
        return (), f"nothing: it is read-only ({why}), which snapledger never deletes"
    if vm.operation is not None:
        return (), (
            f"nothing until the unfinished {vm.operation.kind} operation {vm.operation.op_id} "
            f"is finished: run 'snapledger recover {name}'"
        )
    if not node.needs:
        plan = _try(plan_gc, view, name)
        if plan is not None and _deletes(plan, path):
            return (Route((f"snapledger gc {shlex.quote(name)}",), "deleted: nothing needs it", 0),), None
        return (), "nothing needs it, but gc would keep it (see 'snapledger gc --dry-run')"

    routes = _single_deletes(view, dag, vm, path, cost) + _revert_routes(view, vm, path)
    every, why_not = _every_hold_released(view, dag, vm, path, cost)
    if every is not None and len(every.commands) > 1:
        routes.append(every)
    if node.detached or any(h.kind == "detached" for h in _resting_on(dag, path)):
        routes += _after_discarding_detached(view, vm, path, cost, bool(routes))
    if routes:
        return tuple(routes), None
    return (), why_not


def _after_discarding_detached(
    view: LedgerView, vm: VirtualMachine, path: str, cost: CostModel, have_routes: bool
) -> list[Route]:
    """`gc --include-detached` frees the image, or (when nothing else does) makes a delete able to."""
    gc = _try(plan_gc, view, vm.name, True)
    if gc is None or not gc.steps:
        return []
    command = f"snapledger gc {shlex.quote(vm.name)} --include-detached"
    if _deletes(gc, path):
        return [Route((command,), "discarded with the detached images: nothing else needs it", gc.bytes_moved)]
    if have_routes:
        return []
    after = _simulated(view, vm.name, None, gc)
    dag_after = ImageDag(after, home=vm.home)
    routes = _single_deletes(after, dag_after, after.vms[vm.name], path, cost)
    every, _ = _every_hold_released(after, dag_after, after.vms[vm.name], path, cost)
    if every is not None and len(every.commands) > 1:
        routes.append(every)
    return [
        Route((command, *r.commands), f"{r.effect} (once gc discarded the detached images)", gc.bytes_moved + r.bytes_moved)
        for r in routes
    ]


def _single_deletes(
    view: LedgerView, dag: ImageDag, vm: VirtualMachine, path: str, cost: CostModel
) -> list[Route]:
    """One `delete` frees the image when its plan deletes the file. Only deleting the snapshot
    held by the image itself, or by the image below it (a commit of it), can do that."""
    below = dag.nodes[path].facts.backing
    candidates = sorted(
        (s for s in vm.snapshots.values() if set(s.disks.values()) & {path, below}),
        key=lambda s: (s.created, s.name),
    )
    routes = []
    for snap in candidates:
        for strategy, branches in DELETE_OPTIONS:
            plan = _try(plan_delete, view, vm.name, snap.name, strategy, branches, cost)
            if plan is not None and _deletes(plan, path):
                command = _delete_command(vm.name, snap.name, strategy, branches)
                routes.append(Route((command,), _effect(plan, path), plan.bytes_moved))
                break
    return routes


def _revert_routes(view: LedgerView, vm: VirtualMachine, path: str) -> list[Route]:
    """An active image is the present: a revert abandons it (deleted if nothing else needs it)."""
    if path not in vm.disks.values() or not vm.snapshots:
        return []
    target = vm.current if vm.current is not None else sorted(vm.snapshots)[-1]
    plan = _try(plan_revert, view, vm.name, target, view.ever_used)
    if plan is None or not _deletes(plan, path):
        return []
    command = shlex.join(["snapledger", "revert", vm.name, target])
    return [Route((command,), f"abandoned present: deleted (what was written since {target} is lost)", 0)]


def _every_hold_released(
    view: LedgerView, dag: ImageDag, vm: VirtualMachine, path: str, cost: CostModel
) -> tuple[Route | None, str]:
    """Delete every snapshot held by the image or by an image resting on it, the farthest first,
    so that no data moves; possible when nothing else (a present, a detached file, another VM's
    snapshot) rests on it. Checked on a simulated ledger: the route, or why there is none."""
    holds = _holds(dag, path) + list(_resting_on(dag, path))
    blockers = [h for h in holds if not (h.kind == "frozen" and h.vm == vm.name)]
    if blockers:
        return None, "no deletion frees it: " + "; ".join(_blocker_hint(h, path) for h in blockers)
    depth = {image: dag.depth(image) for image in {h.image for h in holds}}
    order = sorted({(depth[h.image], h.detail) for h in holds}, key=lambda item: (-item[0], item[1]))
    if len(order) > LONGEST_CHECKED_ROUTE:
        return None, (
            f"no single command frees it, and {len(order)} snapshots rest on it: too long a route "
            "of deletions to check here"
        )
    commands: list[str] = []
    moved = 0
    current = view
    for snapshot in dict.fromkeys(snapshot for _, snapshot in order):
        if snapshot not in current.vms[vm.name].snapshots:
            continue
        plan = _try(plan_delete, current, vm.name, snapshot, "auto", "forbid", cost)
        if plan is None:
            return None, f"no deletion frees it: deleting {snapshot} on the way is refused"
        commands.append(_delete_command(vm.name, snapshot, "auto", "forbid"))
        moved += plan.bytes_moved
        freed = _deletes(plan, path)
        current = _simulated(current, vm.name, snapshot, plan)
        if freed:
            return Route(tuple(commands), "deleted by the last of these deletions", moved), ""
    after = ImageDag(current, home=vm.home)
    if path in after.nodes and not after.nodes[path].needs:
        gc = _try(plan_gc, current, vm.name)
        if gc is not None and _deletes(gc, path):
            commands.append(f"snapledger gc {shlex.quote(vm.name)}")
            return Route(tuple(commands), "deleted by gc once nothing needs it", moved), ""
    left = after.nodes[path].needs if path in after.nodes else []
    why = "; ".join(n.describe() for n in left) or "it would stay"
    return None, f"no deletion frees it: after deleting every snapshot resting on it, {why}"


def _blocker_hint(hold: Hold, path: str) -> str:
    itself = hold.image == path
    if hold.kind == "active":
        where = "it is" if itself else f"{hold.image} rests on it:"
        return f"{where} the present of {hold.vm}/{hold.detail}, which a revert or a swap-disk abandons first"
    if hold.kind == "detached":
        if hold.owner is OwnerClass.MANAGED:
            what = "it is detached" if itself else f"detached {hold.image} rests on it"
            return f"{what}: 'snapledger gc {hold.vm} --include-detached' discards it"
        return f"the user's detached file {hold.image} rests on it and is kept with its whole chain"
    if hold.kind == "operation":
        return f"{hold.text}: run 'snapledger recover {hold.vm}'"
    return f"{hold.text} ({hold.image})"
