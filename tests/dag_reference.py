"""The image DAG as it was first written: every node made at once, `needs` marked from each
root down the backing chain. The state machine holds the lazy ImageDag (projections/dag.py)
to it after every step: same images, owners, holders, children, and the same needs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from snapledger.domain.images import ImageFacts, Origin
from snapledger.domain.steps import CreateOverlay, touched_paths
from snapledger.projections.dag import Need, owner_class
from snapledger.projections.scope import in_scope, is_shared, registration_scope, shared_dirs
from snapledger.projections.view import LedgerView


def eager_dag(
    view: LedgerView,
    ignore_detached_of: str | None = None,
    dependants: Mapping[str, Sequence[str]] | None = None,
    home: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Path -> facts, owner, vms, detached, needs (sorted) and children, for every image."""
    nodes: dict[str, dict[str, Any]] = {}
    children: dict[str, list[str]] = defaultdict(list)
    holders: dict[str, list[tuple[str, Origin, bool]]] = defaultdict(list)
    facts: dict[str, ImageFacts] = {}
    shared = shared_dirs(view)
    live = view.live_vms()
    local = {name: vm for name, vm in live.items() if in_scope(vm, home)}
    roots: list[tuple[str, Need]] = []
    for vm in live.values():
        for record in vm.images.values():
            if vm.name not in local:
                if not is_shared(record.path, shared):
                    continue
                roots.append((record.path, Need("elsewhere", vm.name, vm.home)))
            holders[record.path].append((vm.name, record.origin, record.detached))
            if record.path not in facts or record.origin is Origin.MANAGED:
                facts[record.path] = record.facts
    for path, held in holders.items():
        users = view.users_of(path, registration_scope(path, home, shared)) | {n for n, _, _ in held}
        owner = owner_class(users, {origin for _, origin, _ in held})
        nodes[path] = {"facts": facts[path], "owner": owner, "vms": tuple(sorted(users)),
                       "detached": any(d for _, _, d in held), "needs": []}
        if facts[path].backing is not None:
            children[facts[path].backing].append(path)
    for vm in local.values():
        roots += [(path, Need("active", vm.name, disk)) for disk, path in vm.disks.items()]
        roots += [(p, Need("frozen", vm.name, s.name)) for s in vm.snapshots.values() for p in s.disks.values()]
        roots += [(r.path, Need("detached", vm.name, r.path)) for r in vm.images.values()
                  if r.detached and vm.name != ignore_detached_of]
        roots += [(p, Need("dependant", vm.name, d)) for p in vm.images for d in (dependants or {}).get(p, ())]
        if vm.operation is not None:
            for step in vm.operation.steps[vm.operation.done :]:
                paths = (step.path,) if isinstance(step, CreateOverlay) else ()
                roots += [(p, Need("operation", vm.name, vm.operation.op_id)) for p in paths + touched_paths(step)]
    for path, need in roots:
        if path not in nodes:
            continue
        already = bool(nodes[path]["needs"])
        nodes[path]["needs"].append(need)
        current = path
        while not already:  # everything below a needed image is needed
            backing = nodes[current]["facts"].backing
            if backing is None or backing not in nodes:
                break
            already = bool(nodes[backing]["needs"])
            nodes[backing]["needs"].append(Need("below", "", current))
            current = backing
    for path, node in nodes.items():
        node["needs"] = sorted(node["needs"], key=repr)
        node["children"] = sorted(children.get(path, []))
    return nodes


def lazy_dag(view: LedgerView, **options: Any) -> dict[str, dict[str, Any]]:
    """The same picture, read through the lazy ImageDag."""
    from snapledger.projections.dag import ImageDag

    dag = ImageDag(view, **options)
    return {
        path: {"facts": node.facts, "owner": node.owner, "vms": node.vms, "detached": node.detached,
               "needs": sorted(node.needs, key=repr), "children": list(dag.children.get(path, []))}
        for path, node in dag.nodes.items()
    }
