"""`adopt --libvirt`: a libvirt domain and its snapshot metadata into the ledger.

Its file-backed qcow2 disks and their chains are recorded as `adopt --disk` records them; its
external snapshots from libvirt's metadata become history (SnapshotsImported); libvirt's
metadata of them is then removed unless kept on request (docs/libvirt.md: virsh must not act on
a history snapledger manages).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from snapledger.adapters.service.ports import DomainSnapshot, Hypervisor
from snapledger.domain.errors import BadInput, Refused
from snapledger.domain.images import Origin
from snapledger.domain.vm import VirtualMachine

if TYPE_CHECKING:
    from snapledger.adapters.service.commands import Snapledger


@dataclass
class AdoptReport:
    disks: dict[str, str]
    left_alone: list[str]
    imported: list[str]
    notes: list[str] = field(default_factory=list)


def _ordered(snapshots: list[DomainSnapshot]) -> list[DomainSnapshot]:
    """Parents before children (by creation time among siblings)."""
    by_name = {s.name: s for s in snapshots}
    out: list[DomainSnapshot] = []
    placed: set[str] = set()

    def place(snap: DomainSnapshot, path: tuple[str, ...] = ()) -> None:
        if snap.name in placed:
            return
        if snap.name in path:
            raise BadInput(f"libvirt's snapshot metadata loops at {snap.name!r}")
        if snap.parent in by_name:
            place(by_name[snap.parent], (*path, snap.name))
        placed.add(snap.name)
        out.append(snap)

    for snap in sorted(snapshots, key=lambda s: (s.created or 0, s.name)):
        place(snap)
    return out


def adopt_libvirt(
    ledger: Snapledger,
    hypervisor: Hypervisor,
    name: str,
    uri: str,
    pools: Iterable[str] = (),
    keep_metadata: bool = False,
    shared: Iterable[str] = (),
) -> AdoptReport:
    """Record libvirt domain `name`: its file-backed qcow2 disks and their chains, and its
    external snapshots from libvirt's metadata as history. libvirt's metadata of the imported
    snapshots is then removed, unless `keep_metadata`: libvirt 9.0 deletes (merges) external
    snapshots itself, and virsh must not act on a history snapledger manages (docs/libvirt.md)."""
    found = hypervisor.found_domain(uri, name)
    definition, tracked, left_alone = found.definition, found.tracked, found.left_alone
    if not tracked:
        raise BadInput(
            f"domain {name!r} has no file-backed qcow2 disk to track"
            + (f" ({'; '.join(left_alone)})" if left_alone else "")
        )
    snapshots = _ordered(found.snapshots)
    notes: list[str] = []
    records: list[dict[str, Any]] = []
    origins: dict[str, Origin] = {}
    overlays: set[str] = set()
    for snap in snapshots:
        for target, (mode, overlay) in snap.disks.items():
            if mode == "internal":
                raise Refused(
                    f"snapshot {snap.name!r} of {name!r} is internal ({target}): snapledger keeps "
                    "external snapshots only; delete it with virsh first"
                )
            if mode == "external" and overlay and target in tracked:
                overlays.add(overlay)
        if snap.memory not in (None, "no"):
            notes.append(f"snapshot {snap.name}: its memory state is not imported (disks only)")
    for snap in snapshots:
        frozen = {}
        for target, (mode, _overlay) in snap.disks.items():
            if mode != "external" or target not in tracked:
                continue
            path = snap.domain_sources.get(target)
            if path is None:
                raise Refused(f"libvirt's metadata of snapshot {snap.name!r} does not say what {target} was")
            frozen[target] = path
            if path not in overlays:
                origins[path] = Origin.ADOPTED  # the disk as it was before its first snapshot
        if not frozen:
            notes.append(f"snapshot {snap.name}: captures no tracked disk, not imported")
            continue
        records.append({
            "name": snap.name,
            "parent": snap.parent,
            "disks": frozen,
            "created": _created(snap.created),
            "domain_xml": snap.domain,
            "description": snap.description,
        })
    imported_names = {r["name"] for r in records}
    for record in records:  # a parent that was not imported: its nearest imported ancestor
        parent = record["parent"]
        by_name = {s.name: s for s in snapshots}
        while parent is not None and parent not in imported_names:
            parent = by_name[parent].parent if parent in by_name else None
        record["parent"] = parent
    for overlay in overlays:
        origins.setdefault(overlay, Origin.MANAGED)
    for path in tracked.values():
        origins.setdefault(path, Origin.ADOPTED)
    current = _current(records)
    at = ledger.clock()

    def extend(vm: VirtualMachine) -> None:
        vm.bind_libvirt(uri, name)
        if records:
            vm.import_snapshots(records, current, at)

    ledger.adopt(name, tracked, pools, definition, origins=origins, extend=extend, shared=shared)
    if records and not keep_metadata:
        for record in records:
            hypervisor.forget_snapshot(uri, name, record["name"])
        notes.append(
            "libvirt's metadata of the imported snapshots was removed: snapledger keeps their "
            "history now (--keep-libvirt-metadata keeps it)"
        )
    return AdoptReport(tracked, left_alone, [r["name"] for r in records], notes)


def _created(seconds: int | None) -> str:
    if seconds is None:
        return "unknown"
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")


def _current(records: list[dict[str, Any]]) -> str | None:
    """The snapshot the present grew from: the last one taken (libvirt cannot revert external
    snapshots, so its history is a line)."""
    if not records:
        return None
    return str(records[-1]["name"])


__all__ = ["AdoptReport", "adopt_libvirt"]
