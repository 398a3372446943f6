"""`show VM NAME`: one snapshot in detail, like `virsh snapshot-info`."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

from .documents import snapshot_json

if TYPE_CHECKING:
    from .view import LedgerView

_BY_CREATION = operator.attrgetter("created", "name")


def snapshot_info_document(
    view: LedgerView, vm_name: str, name: str, position: int | None, state: str | None
) -> dict[str, Any]:
    """Snapshot `name` of `vm_name` as `view` holds it (UnknownSnapshot if it has none), with
    what the view does not know: the ledger `position` of the event that took it and the VM's
    `state` then ("running", "shut off" or None: not recorded). `created` stays as recorded
    (UTC, ISO 8601), as in `show VM --json`."""
    vm = view.vms[vm_name]
    snap = vm.snapshot(name)
    children = sorted((s for s in vm.snapshots.values() if s.parent == name), key=_BY_CREATION)
    document = {
        "vm": vm_name,
        **snapshot_json(snap, vm.broken_snapshots().get(name)),
        "children": [child.name for child in children],
        "current": vm.current == name,
        "state": state,
        "position": position,
        "has_definition": snap.domain_xml is not None,
    }
    return document
