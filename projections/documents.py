"""The JSON documents of the command line (contract: docs/cli.md), as pure functions of views,
plans and results: what `--json` prints, and what the human output is drawn from.

The `show` document of a VM is computed from a LedgerView. The persisted projection
(adapters/checkpoint/persisted.py) stores it per VM, as the exact text `show --json` prints, so
that `show` can answer without folding the ledger; the command line computes it the same way when
it has to. One function, so both agree.

The other documents live beside their read models: `diff` (history.py), `explain` (explain.py)
and `log`'s entries (trail.py).

Light to import: `show VM` for people prints the stored document through adapters/cli/output.py,
which imports this module, before eventsourcing is imported. What folds the ledger is imported
only where a document is computed from a view.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from snapledger.domain.steps import Plan, step_to_dict

from .kept import KeptPerObject
from .sizes import frozen_allocated

if TYPE_CHECKING:
    from snapledger.domain.images import ImageFacts
    from snapledger.domain.vm import SnapshotRecord, VirtualMachine

    from .dag import ImageDag
    from .pictures import ImagePicture
    from .space import VmSpace
    from .tree import SnapshotTree
    from .view import LedgerView


def disk_chains(vm: VirtualMachine, dag: ImageDag) -> dict[str, dict[str, Any]]:
    """Each disk's active image and its chain (active first). The only part of the document
    that depends on other aggregates than the VM's own (the images other VMs hold)."""
    return {
        disk: {
            "active": active,
            # a retired VM's images are no longer in the DAG: its chains as it recorded them
            "chain": dag.chain(active) if active in dag.nodes else vm.chain_of(active),
        }
        for disk, active in sorted(vm.disks.items())
    }


_BY_CREATION = operator.attrgetter("created", "name")


def snapshot_json(
    snap: SnapshotRecord, broken: list[str] | None = None, allocated: int = 0
) -> dict[str, Any]:
    """`broken`: the disks whose frozen image (or an image below it) is recorded gone.
    `allocated`: the bytes allocated in its frozen images as recorded (sizes.py)."""
    out: dict[str, Any] = {
        "name": snap.name,
        "parent": snap.parent,
        "created": snap.created,
        "description": snap.description,
        "disks": dict(snap.disks),
        "allocated": allocated,
    }
    if broken:
        out["broken"] = list(broken)
    return out


def vm_document(
    view: LedgerView, name: str, dag: ImageDag | None = None, snapshots: bool = True
) -> dict[str, Any]:
    """`dag`: the view's ImageDag, when the caller already has it. `snapshots`: False leaves
    the snapshots out (vm_document_text puts their kept texts in)."""
    from .dag import ImageDag

    vm = view.vms[name]
    broken = vm.broken_snapshots() if snapshots else {}
    document: dict[str, Any] = {
        "vm": name,
        "host": vm.home or None,
        "current": vm.current,
        "domain_xml": vm.domain_xml,
        "disks": disk_chains(vm, dag if dag is not None else ImageDag(view, home=vm.home)),
        "snapshots": [
            snapshot_json(snap, broken.get(snap.name), frozen_allocated(vm.images, snap.disks))
            for snap in sorted(vm.snapshots.values(), key=_BY_CREATION)
        ] if snapshots else [],
        "operation": None
        if vm.operation is None
        else {
            "id": vm.operation.op_id,
            "kind": vm.operation.kind,
            "done": vm.operation.done,
            "steps": len(vm.operation.steps),
            "failure": vm.operation.failure,
        },
    }
    if vm.retired is not None:
        document["retired"] = vm.retired
    missing = sorted(vm.missing_images())
    if missing:
        document["missing"] = missing
    return document


def adopted_domain_document(
    document: dict[str, Any], left_alone: Iterable[str], imported: Iterable[str], notes: Iterable[str]
) -> dict[str, Any]:
    """`adopt --libvirt`: the VM document, and what adopting the domain left alone, imported
    and noted."""
    return {**document, "left_alone": list(left_alone), "imported": list(imported), "notes": list(notes)}


def plan_document(plan: Plan, done: bool, bytes_freed: int | None = None) -> dict[str, Any]:
    """snapshot, revert, delete, and each VM's plan of gc; `done` is false for a dry run.
    `bytes_freed`: the bytes of the files it deletes (delete: measured before it ran)."""
    document: dict[str, Any] = {
        "kind": plan.kind,
        "strategy": plan.strategy,
        "done": done,
        "steps": [step_to_dict(step) for step in plan.steps],
        "bytes_moved": plan.bytes_moved,
        "notes": list(plan.notes),
    }
    if bytes_freed is not None:
        document["bytes_freed"] = bytes_freed
    return document


def prune_document(
    vm: str, kept: Mapping[str, Sequence[str]], deleted: Sequence[tuple[str, Plan, int]], done: bool
) -> dict[str, Any]:
    """`prune`: what goes (each deletion's plan, in the order done or to be done, with the bytes
    it moves and frees) and what stays, with the rules that keep it."""
    return {
        "vm": vm,
        "done": done,
        "deleted": [name for name, _, _ in deleted],
        "kept": sorted(kept),
        "kept_because": {name: list(why) for name, why in sorted(kept.items())},
        "deletions": [
            {**plan_document(plan, done), "snapshot": name, "bytes_freed": freed}
            for name, plan, freed in deleted
        ],
        "bytes_moved": sum(plan.bytes_moved for _, plan, _ in deleted),
        "bytes_freed": sum(freed for _, _, freed in deleted),
    }


def recover_document(finished: Iterable[str]) -> dict[str, Any]:
    return {"finished": list(finished)}


class ReconcileFindings(Protocol):
    """What `reconcile` found (the service's Reconciliation): the parts its document shows."""

    @property
    def changes(self) -> Sequence[str]: ...
    @property
    def observed(self) -> Sequence[ImageFacts]: ...
    @property
    def found(self) -> Sequence[ImageFacts]: ...
    @property
    def gone(self) -> Sequence[str]: ...
    @property
    def disowned(self) -> Sequence[str]: ...


def reconcile_document(vm: str, dry_run: bool, found: ReconcileFindings, position: int) -> dict[str, Any]:
    """`position`: the ledger's last position after the command."""
    return {
        "vm": vm,
        "dry_run": dry_run,
        "changes": list(found.changes),
        "observed": [facts.path for facts in found.observed],
        "found": [facts.path for facts in found.found],
        "gone": list(found.gone),
        "disowned": list(found.disowned),
        "position": position,
    }


def retire_document(vm: str, left_behind: Iterable[str], position: int) -> dict[str, Any]:
    return {"vm": vm, "left_behind": list(left_behind), "position": position}


def verify_document(
    chain: list[str], disks: list[str], notes: list[str], position: int, head_hash: str
) -> dict[str, Any]:
    """`chain`: the hash chain's findings, `disks`: drift, `notes`: remarks about events older
    than the chain; the head is the chain's last position and hash."""
    findings = chain + disks
    return {
        "ok": not findings, "findings": findings, "chain": chain, "disks": disks, "notes": notes,
        "head": {"position": position, "hash": head_hash},
    }


def vm_rows(view: LedgerView, living_on: str | None = None) -> list[dict[str, Any]]:
    """`list`: the VMs tracked (not retired), sorted by name; with `living_on`, only those
    that host may change (`list --mine`)."""
    return [
        {
            "vm": vm.name,
            "host": vm.home or None,
            "current": vm.current,
            "snapshots": len(vm.snapshots),
            "disks": dict(vm.disks),
            "operation": vm.operation.kind if vm.operation else None,
        }
        for vm in sorted(view.live_vms().values(), key=lambda v: v.name)
        if living_on is None or vm.lives_on(living_on)
    ]


def usage_document(spaces: Iterable[VmSpace]) -> dict[str, Any]:
    """`usage [VM]`: per VM its allocated bytes, and per snapshot and image (projections/space.py).
    A snapshot's `freeable` is null when a delete is refused now (`delete_refused` says why)."""
    return {
        "vms": [
            {
                "vm": vm.vm,
                "host": vm.host,
                "allocated": vm.allocated,
                "size": vm.size,
                "measured": vm.measured,
                "snapshots": [
                    {
                        "name": snap.name,
                        "allocated": snap.allocated,
                        "freeable": snap.freeable,
                        "bytes_moved": snap.moves,
                        **({"delete_refused": snap.refused} if snap.refused is not None else {}),
                    }
                    for snap in vm.snapshots
                ],
                "images": [
                    {
                        "path": image.path,
                        "owner": image.owner.value,
                        "allocated": image.allocated,
                        "size": image.size,
                        "measured": image.measured,
                    }
                    for image in vm.images
                ],
                "notes": list(vm.notes),
            }
            for vm in spaces
        ]
    }


def tree_document(tree: SnapshotTree) -> dict[str, Any]:
    """`tree`: the snapshot tree, the present, and each line of history from a root to a leaf."""
    return {
        "vm": tree.vm,
        "current": tree.current,
        "present": tree.present,
        "roots": list(tree.roots),
        "snapshots": {
            n.name: {
                "parent": n.parent,
                "children": list(n.children),
                "disks": n.frozen,
                "current": n.current,
                "allocated": n.allocated,
                "created": n.created,
                "description": n.description,
            }
            for n in tree.nodes.values()
        },
        "branches": [list(b) for b in tree.branches()],
    }


def image_dag_document(picture: ImagePicture, vm: str) -> dict[str, Any]:
    """`tree --images`: the image DAG of one VM, each image with what it is marked with."""
    from .pictures import image_lines  # on use, as vm_document's ImageDag: it imports the view

    return {
        "vm": vm,
        "roots": picture.roots(),
        "images": {
            path: {
                "owner": image.owner.value,
                "backing": image.backing,
                "freezes": image.freezes[0][1] if image.freezes else None,
                "snapshots": [snap for _, snap, _ in image.freezes],
                "active_for": [disk for _, disk in image.active_for],
                "detached": image.detached,
                "needed": image.needed,
                "needed_because": [n.describe() for n in image.needs],
                "children": list(image.children),
                "branch_point": image.branch_point,
                "vms": list(image.vms),
                "marks": image_lines(image, qualify=False),
            }
            for path, image in picture.images.items()
        },
    }


def json_text(value: Any) -> str:
    """JSON as the command line prints it (`output.emit_json`, without the final newline)."""
    return json.dumps(value, indent=2, sort_keys=False)


# Stands for the snapshots in the document's text until they are put in: a real newline and
# two spaces only ever start a key of the top level (a string's newlines are escaped).
_SNAPSHOTS_HERE = '\n  "snapshots": "\\u0000"'
# The text of each snapshot's part, kept while its record lives (records are replaced, never
# changed in place): a VM with 10,000 snapshots is not encoded whole at every save.
_SNAPSHOT_TEXTS: KeptPerObject[tuple[int, str]] = KeptPerObject()


def vm_document_text(view: LedgerView, name: str, dag: ImageDag | None = None) -> str:
    """`json_text(vm_document(view, name, dag))`, put together from parts (the state
    machine and `verify` hold it to that)."""
    vm = view.vms[name]
    document = vm_document(view, name, dag, snapshots=False)
    document["snapshots"] = "\0"
    head = json_text(document)
    broken = vm.broken_snapshots()
    parts = [
        _snapshot_text(snap, broken.get(snap.name), frozen_allocated(vm.images, snap.disks))
        for snap in sorted(vm.snapshots.values(), key=_BY_CREATION)
    ]
    listed = "[\n" + ",\n".join(parts) + "\n  ]" if parts else "[]"
    return head.replace(_SNAPSHOTS_HERE, '\n  "snapshots": ' + listed, 1)


def _snapshot_text(snap: SnapshotRecord, broken: list[str] | None, allocated: int) -> str:
    if broken:
        return _indented(json_text(snapshot_json(snap, broken, allocated)))
    kept = _SNAPSHOT_TEXTS.get(snap)
    # a merge into its frozen image changes its size, not the record: kept with the size
    if kept is None or kept[0] != allocated:
        kept = (allocated, _indented(json_text(snapshot_json(snap, allocated=allocated))))
        _SNAPSHOT_TEXTS.put(snap, kept)
    return kept[1]


def _indented(text: str) -> str:
    return "\n".join("    " + line for line in text.split("\n"))
