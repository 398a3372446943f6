"""`explain`'s "which deletions would free it": asked of the planners themselves (plan_delete,
plan_revert, plan_gc), a route of several commands checked by applying each plan to a copy of
the VM aggregate with its own methods (explain.py shows the answer)."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

from snapledger.domain.errors import SnapledgerError
from snapledger.domain.images import OwnerClass
from snapledger.domain.steps import Commit, DeleteFile, Plan, Pull
from snapledger.domain.vm import VirtualMachine

from .cost import CostModel
from .dag import ImageDag, NeedKind
from .holds import Hold, Route, holds_of, read_only_because, resting_on
from .planners import plan_delete, plan_gc, plan_revert
from .view import LedgerView, private_copy, replacing

# Routes of more deletions than this are not simulated (each step copies the VM aggregate).
LONGEST_CHECKED_ROUTE = 32

# (strategy, branches) tried for one `delete`, simplest first: the first that frees it is shown.
DELETE_OPTIONS: tuple[tuple[str, str], ...] = (
    ("auto", "forbid"),
    ("auto", "pull"),
    ("pull", "forbid"),
    ("commit", "forbid"),
)


def delete_command(vm: str, snapshot: str, strategy: str, branches: str) -> str:
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


def simulated(view: LedgerView, vm_name: str, target: str | None, plan: Plan) -> LedgerView:
    """The view as it would be once `plan` (a delete or a gc) ran: the VM aggregate's own
    methods applied to a copy, so no rule is re-derived here. A private copy is enough (the
    domain replaces its records, never changes one in place: view.private_copy); a deep copy
    cost a prune of 150 snapshots 3 s."""
    vm = private_copy(view.vms[vm_name])
    op = "explain-simulation"
    vm.start_operation(op, plan.kind, target, plan, [], {"previous_active": dict(vm.disks)}, at="")
    for index in range(len(plan.steps)):
        vm.complete_step(op, index, [])
    vm.close_operation(op, "")
    return replacing(view, vm)


def try_plan(planner: Callable[..., Plan], *args: Any) -> Plan | None:
    """The planner's plan, or None where it refuses."""
    try:
        return planner(*args)
    except SnapledgerError:
        return None


def freeing(
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
        why = "; ".join(read_only_because(view, node.owner, node.vms, path))
        return (), f"nothing: it is read-only ({why}), which snapledger never deletes"
    if vm.operation is not None:
        return (), (
            f"nothing until the unfinished {vm.operation.kind} operation {vm.operation.op_id} "
            f"is finished: run 'snapledger recover {name}'"
        )
    if not node.needs:
        plan = try_plan(plan_gc, view, name)
        if plan is not None and _deletes(plan, path):
            return (Route((f"snapledger gc {shlex.quote(name)}",), "deleted: nothing needs it", 0),), None
        return (), "nothing needs it, but gc would keep it (see 'snapledger gc --dry-run')"

    routes = _single_deletes(view, dag, vm, path, cost) + _revert_routes(view, vm, path)
    every, why_not = _every_hold_released(view, dag, vm, path, cost)
    if every is not None and len(every.commands) > 1:
        routes.append(every)
    if node.detached or any(h.kind is NeedKind.DETACHED for h in resting_on(dag, path)):
        routes += _after_discarding_detached(view, vm, path, cost, bool(routes))
    if routes:
        return tuple(routes), None
    return (), why_not


def _after_discarding_detached(
    view: LedgerView, vm: VirtualMachine, path: str, cost: CostModel, have_routes: bool
) -> list[Route]:
    """`gc --include-detached` frees the image, or (when nothing else does) makes a delete able to."""
    gc = try_plan(plan_gc, view, vm.name, True)
    if gc is None or not gc.steps:
        return []
    command = f"snapledger gc {shlex.quote(vm.name)} --include-detached"
    if _deletes(gc, path):
        return [Route((command,), "discarded with the detached images: nothing else needs it", gc.bytes_moved)]
    if have_routes:
        return []
    after = simulated(view, vm.name, None, gc)
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
            plan = try_plan(plan_delete, view, vm.name, snap.name, strategy, branches, cost)
            if plan is not None and _deletes(plan, path):
                command = delete_command(vm.name, snap.name, strategy, branches)
                routes.append(Route((command,), _effect(plan, path), plan.bytes_moved))
                break
    return routes


def _revert_routes(view: LedgerView, vm: VirtualMachine, path: str) -> list[Route]:
    """An active image is the present: a revert abandons it (deleted if nothing else needs it)."""
    if path not in vm.disks.values() or not vm.snapshots:
        return []
    target = vm.current if vm.current is not None else sorted(vm.snapshots)[-1]
    plan = try_plan(plan_revert, view, vm.name, target, view.ever_used)
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
    holds = holds_of(dag, path) + list(resting_on(dag, path))
    blockers = [h for h in holds if not (h.kind is NeedKind.FROZEN and h.vm == vm.name)]
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
        plan = try_plan(plan_delete, current, vm.name, snapshot, "auto", "forbid", cost)
        if plan is None:
            return None, f"no deletion frees it: deleting {snapshot} on the way is refused"
        commands.append(delete_command(vm.name, snapshot, "auto", "forbid"))
        moved += plan.bytes_moved
        freed = _deletes(plan, path)
        current = simulated(current, vm.name, snapshot, plan)
        if freed:
            return Route(tuple(commands), "deleted by the last of these deletions", moved), ""
    after = ImageDag(current, home=vm.home)
    if path in after.nodes and not after.nodes[path].needs:
        gc = try_plan(plan_gc, current, vm.name)
        if gc is not None and _deletes(gc, path):
            commands.append(f"snapledger gc {shlex.quote(vm.name)}")
            return Route(tuple(commands), "deleted by gc once nothing needs it", moved), ""
    left = after.nodes[path].needs if path in after.nodes else []
    why = "; ".join(n.describe() for n in left) or "it would stay"
    return None, f"no deletion frees it: after deleting every snapshot resting on it, {why}"


def _blocker_hint(hold: Hold, path: str) -> str:
    itself = hold.image == path
    if hold.kind is NeedKind.ACTIVE:
        where = "it is" if itself else f"{hold.image} rests on it:"
        return f"{where} the present of {hold.vm}/{hold.detail}, which a revert or a swap-disk abandons first"
    if hold.kind is NeedKind.DETACHED:
        if hold.owner is OwnerClass.MANAGED:
            what = "it is detached" if itself else f"detached {hold.image} rests on it"
            return f"{what}: 'snapledger gc {hold.vm} --include-detached' discards it"
        return f"the user's detached file {hold.image} rests on it and is kept with its whole chain"
    if hold.kind is NeedKind.OPERATION:
        return f"{hold.text}: run 'snapledger recover {hold.vm}'"
    return f"{hold.text} ({hold.image})"
