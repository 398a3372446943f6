"""The `show` document of a VM: what `snapledger show VM --json` prints (contract: cli.md).

Computed from a LedgerView. The persisted projection (adapters/checkpoint/persisted.py) stores it per VM,
as the exact text `show --json` prints, so that `show` can answer without folding the ledger;
the command line computes it the same way when it has to. One function, so both agree.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # json_text is used where eventsourcing is not imported (adapters/cli/output.py)
    from snapledger.domain.vm import SnapshotRecord, VirtualMachine

    from .dag import ImageDag
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


def snapshot_json(snap: SnapshotRecord, broken: list[str] | None = None) -> dict[str, Any]:
    """`broken`: the disks whose frozen image (or an image below it) is recorded gone."""
    out: dict[str, Any] = {
        "name": snap.name,
        "parent": snap.parent,
        "created": snap.created,
        "description": snap.description,
        "disks": dict(snap.disks),
    }
    if broken:
        out["broken"] = list(broken)
    return out


def vm_document(view: LedgerView, name: str, dag: ImageDag | None = None) -> dict[str, Any]:
    """`dag`: the view's ImageDag, when the caller already has it (it is built over every image
    of the ledger, the costly part)."""
    from .dag import ImageDag

    vm = view.vms[name]
    broken = vm.broken_snapshots()
    document: dict[str, Any] = {
        "vm": name,
        "current": vm.current,
        "domain_xml": vm.domain_xml,
        "disks": disk_chains(vm, dag if dag is not None else ImageDag(view)),
        "snapshots": [
            snapshot_json(snap, broken.get(snap.name))
            for snap in sorted(vm.snapshots.values(), key=lambda s: (s.created, s.name))
        ],
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


def json_text(value: Any) -> str:
    """JSON as the command line prints it (`output.emit_json`, without the final newline)."""
    return json.dumps(value, indent=2, sort_keys=False)
