"""What `reconcile` would record: the disks' reality where it differs from a VM's ledger.

Read-only: it looks at every image the VM holds (with its recorded format) and the chains below
them, and says what changed. Nothing here writes an image or records an event; the service
records the result (`Reconciled`) unless it is a dry run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from snapledger.adapters.service.drift import DiskChecks, frozen_rules, outside_finding
from snapledger.domain.errors import OutsideAllowedDirs, StorageError
from snapledger.domain.images import ImageFacts, Origin
from snapledger.domain.vm import VirtualMachine


@dataclass
class Reconciliation:
    observed: list[ImageFacts] = field(default_factory=list)  # new facts of held images
    found: list[ImageFacts] = field(default_factory=list)  # images now below them (read-only)
    gone: list[str] = field(default_factory=list)  # held images no longer on disk
    disowned: list[str] = field(default_factory=list)  # managed images replaced by another file
    changes: list[str] = field(default_factory=list)  # one line per difference, for people
    unresolvable: list[str] = field(default_factory=list)  # what reconcile can't record

    def to_json(self) -> dict[str, Any]:
        return {
            "changes": list(self.changes),
            "observed": [f.path for f in self.observed],
            "found": [f.path for f in self.found],
            "gone": list(self.gone),
            "disowned": list(self.disowned),
        }


def reconciliation(vm: VirtualMachine, checks: DiskChecks) -> Reconciliation:
    """Where the disks differ from what `vm` recorded, as facts to record."""
    out = Reconciliation()
    storage = checks.storage
    allowed = checks.resolved_dirs(vm)
    seen = checks.look(vm, sorted(vm.images))
    for path, facts in seen.items():
        record = vm.images[path]
        if isinstance(facts, str):
            if not storage.exists(path):
                if not record.missing:
                    out.gone.append(path)
                    out.changes.append(f"{path}: gone from the disk")
            else:
                out.unresolvable.append(facts)  # there, but not the image it was (format...)
            continue
        outside = checks.outside(facts, allowed)
        if outside:
            out.unresolvable += outside
            continue
        if record.missing:
            out.observed.append(facts)
            out.changes.append(f"{path}: back on the disk")
        else:
            changed = record.facts.identity_differs(facts, **frozen_rules(vm, path))
            if changed or record.facts.size != facts.size or record.facts.allocated != facts.allocated:
                out.observed.append(facts)
                if changed:
                    out.changes.append(f"{path}: {', '.join(changed)}")
        replaced = (facts.device, facts.inode) != (record.facts.device, record.facts.inode)
        if replaced and not record.missing and record.origin is Origin.MANAGED:
            out.disowned.append(path)
            out.changes.append(f"{path}: another file now; it is the user's from now on (adopted)")
        _find_below(vm, checks, facts, out)
    return out


def _find_below(
    vm: VirtualMachine, checks: DiskChecks, facts: ImageFacts, out: Reconciliation
) -> None:
    """Images now in the chain below `facts` that the VM does not hold: found (read-only)."""
    backing = facts.backing
    if backing is None or backing in vm.images or any(f.path == backing for f in out.found):
        return
    try:
        chain = checks.storage.inspect_chain(
            backing, sorted(vm.allowed_dirs()), facts.backing_format
        )
    except OutsideAllowedDirs as outside:
        out.unresolvable.append(outside_finding(outside.path, outside.resolved, outside.below))
        return
    except StorageError as error:
        out.unresolvable.append(f"{facts.path}: its backing chain can't be read ({error})")
        return
    for below in chain:
        if below.path in vm.images or any(f.path == below.path for f in out.found):
            return
        out.found.append(below)
        out.changes.append(f"{below.path}: now below {facts.path}; recorded as read-only")
