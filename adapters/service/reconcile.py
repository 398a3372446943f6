"""What `reconcile` would record: the disks' reality where it differs from a VM's ledger.

Read-only: it looks at every image the VM holds (with its recorded format) and the chains below
them, and says what changed. Nothing here writes an image or records an event; the service
records the result (`Reconciled`) unless it is a dry run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from snapledger.adapters.service.drift import DiskChecks, frozen_rules, outside_finding
from snapledger.adapters.service.preconditions import second_name_of
from snapledger.adapters.service.registrations import claimed
from snapledger.domain.errors import DriftFound, OutsideAllowedDirs, StorageError
from snapledger.domain.images import ImageFacts, Origin
from snapledger.domain.vm import VirtualMachine

if TYPE_CHECKING:
    from snapledger.adapters.service.commands import Snapledger


@dataclass
class Reconciliation:
    observed: list[ImageFacts] = field(default_factory=list)  # new facts of held images
    found: list[ImageFacts] = field(default_factory=list)  # images now below them (read-only)
    gone: list[str] = field(default_factory=list)  # held images no longer on disk
    disowned: list[str] = field(default_factory=list)  # managed images replaced by another file
    changes: list[str] = field(default_factory=list)  # one line per difference, for people
    unresolvable: list[str] = field(default_factory=list)  # what reconcile can't record


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
    for above, below in zip([facts, *chain], chain, strict=False):
        if below.path in vm.images or any(f.path == below.path for f in out.found):
            return
        second_name = second_name_of(checks.storage, below.path, above.path)
        if second_name is not None:  # it may be an image the ledger knows by its real name
            out.unresolvable.append(second_name)
            return
        out.found.append(below)
        out.changes.append(f"{below.path}: now below {facts.path}; recorded as read-only")


def reconcile(ledger: Snapledger, vm_name: str, dry_run: bool = False) -> Reconciliation:
    """Record the disks' reality where it differs from the ledger (new identities and
    backings, files found below, files gone), writing and deleting no image. Differences it
    can't record (a file outside the VM's directories, a file that is not the image it was)
    are refused (exit 3) with nothing recorded. A libvirt domain's persistent definition on
    other images or chains than the ledger's is redefined on the ledger's."""
    ledger.refresh()
    vm = ledger.idle(vm_name)
    found = reconciliation(vm, ledger.checks(vm))
    if found.unresolvable:
        raise DriftFound(
            f"reconcile can't record this: {'; '.join(found.unresolvable)}; put the files "
            "right (or swap-disk the disk), then run it again. Nothing was changed"
        )
    hypervisor = ledger.operations.hypervisor_of(vm)
    stale = hypervisor.stale_definition(vm) if hypervisor is not None else None
    if stale is not None:
        # an image the stale definition names that changed on disk may be where the domain
        # ran and wrote: moving the definition off it could hide those writes
        checks = ledger.checks(vm)
        changed = [p for p in stale[1] if p in vm.images and checks.drift(vm, checks.look(vm, [p]))]
        if changed:
            raise DriftFound(
                f"reconcile can't redefine the domain: its persistent definition names "
                f"{', '.join(changed)}, which changed on disk since the ledger recorded it "
                "(the domain may have run on it); put the definition right by hand, or "
                "retire the VM and adopt it again. Nothing was changed"
            )
    if not dry_run and (found.changes or found.observed):
        vm.reconcile(found.observed, found.found, found.gone, found.disowned, ledger.clock())
        registry = ledger.registry(vm)
        ledger.save(vm, *(claimed(registry, f.path, vm_name) for f in found.found))
        if hypervisor is not None:  # the chains just recorded may make it stale (or not)
            stale = hypervisor.stale_definition(vm)
    if stale is not None:
        found.changes.append(_redefined(ledger, vm, stale[0], dry_run))
    return found


def _redefined(ledger: Snapledger, vm: VirtualMachine, xml: str, dry_run: bool) -> str:
    hypervisor = ledger.operations.required_hypervisor(vm)
    where = ", ".join(f"{d}={p}" for d, p in sorted(vm.disks.items()))
    if not dry_run:
        hypervisor.redefine(vm, xml)
        vm.record_definition(hypervisor.current_definition(vm), ledger.clock(), redefined=True)
        ledger.save(vm)
    return f"libvirt's persistent definition {'would be' if dry_run else 'was'} redefined on {where}"
