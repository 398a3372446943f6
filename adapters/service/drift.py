"""What the disks say against what a VM's ledger says, and who else has its files.

Every check reads the world through the storage port and returns findings (one line each) or
raises; none records anything: the service decides what a finding costs (drift is recorded and
refused with exit 3; an image another process holds is a conflict, exit 4). Images the ledger
knows are always opened with their recorded format.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from snapledger.adapters.service.ports import StoragePort
from snapledger.domain.errors import ImageInUse, OutsideAllowedDirs, StorageError
from snapledger.domain.images import ImageFacts
from snapledger.domain.names import is_within
from snapledger.domain.steps import (
    Commit,
    DeleteFile,
    Plan,
    Pull,
    RebaseUnsafe,
    SetActive,
    Step,
    touched_paths,
)
from snapledger.domain.vm import VirtualMachine

Seen = ImageFacts | str  # the facts on disk now, or why they can't be read


def recorded_format(vm: VirtualMachine, path: str) -> str | None:
    """The format the ledger recorded for `path`; None for a file it does not know."""
    record = vm.images.get(path)
    return record.facts.format if record is not None else None


def changed_paths(step: Step) -> tuple[str, ...]:
    """Files whose content a destructive step changes or that it deletes. A pointer-only rebase
    is not among them: what the image reads stays the same, so what rests on it does too."""
    if isinstance(step, Commit):
        return (step.base,)
    if isinstance(step, Pull):
        return (step.image,)
    if isinstance(step, DeleteFile):
        return (step.path,)
    return ()


def written_paths(step: Step) -> tuple[str, ...]:
    """Files a destructive step writes or deletes (a commit only reads its top)."""
    if isinstance(step, Commit):
        return (step.base,)
    if isinstance(step, (Pull, RebaseUnsafe)):
        return (step.image,)
    if isinstance(step, DeleteFile):
        return (step.path,)
    return ()


def frozen_rules(vm: VirtualMachine, path: str) -> dict[str, bool]:
    """What of `path`'s recorded facts must still hold on disk, beyond its identity (for
    ImageFacts.identity_differs): the size of every image a guest does not write (not active);
    the mtime of every one that is not detached either (its content never changes: frozen
    means frozen); and its ctime too, unless the VM is a libvirt domain (libvirt's DAC driver
    chowns every image of a running domain's chain at each start, and leaves backing files so)."""
    active = path in vm.disks.values()
    record = vm.images.get(path)
    kept = not active and (record is None or not record.detached)
    return {"check_size": not active, "check_mtime": kept, "check_ctime": kept and vm.libvirt is None}


class DiskChecks:
    def __init__(self, storage: StoragePort) -> None:
        self.storage = storage

    # ---- identity ----------------------------------------------------------------------

    def look(self, vm: VirtualMachine, paths: Iterable[str]) -> dict[str, Seen]:
        out: dict[str, Seen] = {}
        for path in paths:
            try:
                out[path] = self.storage.inspect(path, recorded_format(vm, path))
            except StorageError as error:
                out[path] = f"{path}: {error}"
        return out

    def drift(self, vm: VirtualMachine, seen_on_disk: Mapping[str, Seen]) -> list[str]:
        """Where the disk disagrees with what `vm` recorded. Active images change size as the
        guest writes; every other image must keep its size too, and one that is not detached
        its content: a moved mtime is drift (and a moved ctime, unless libvirt runs the VM:
        its security driver chowns the whole chain at each start). See `frozen_rules`."""
        return [finding for found in self.drift_by_path(vm, seen_on_disk).values() for finding in found]

    def drift_by_path(self, vm: VirtualMachine, seen_on_disk: Mapping[str, Seen]) -> dict[str, list[str]]:
        """`drift`'s findings by the image they are about (only images with findings)."""
        allowed = self.resolved_dirs(vm)
        by_path: dict[str, list[str]] = {}
        for path, seen in seen_on_disk.items():
            findings: list[str] = []
            if vm.images[path].missing:  # recorded gone by reconcile: gone is no news
                if not isinstance(seen, str):
                    findings.append(f"{path}: recorded gone, but it is back on the disk")
            elif isinstance(seen, str):
                findings.append(seen)
            else:
                changed = vm.images[path].facts.identity_differs(seen, **frozen_rules(vm, path))
                if changed:
                    findings.append(f"{path}: {', '.join(changed)}")
                findings += self.outside(seen, allowed)
            if findings:
                by_path[path] = findings
        return by_path

    def same_files(self, vm: VirtualMachine, step: Step) -> list[str]:
        """Right before a destructive step: each file is still the one the ledger knows (device
        and inode; sizes and backing may be mid-change after a crash), has no other name, and
        every file the step opens lies in the VM's directories."""
        allowed = self.resolved_dirs(vm)
        findings: list[str] = []
        for path in touched_paths(step):
            record = vm.images.get(path)
            if record is None or not self.storage.exists(path):
                continue
            seen = self.storage.inspect(path, record.facts.format)
            if (seen.device, seen.inode) != (record.facts.device, record.facts.inode):
                findings.append(f"{path}: replaced (inode {record.facts.inode} -> {seen.inode})")
            findings += self.outside(seen, allowed)
        findings += self.hard_links(written_paths(step))
        return list(dict.fromkeys(findings + self.chain_findings(vm, step, compare=False)))

    # ---- confinement and chains --------------------------------------------------------

    def resolved_dirs(self, vm: VirtualMachine) -> list[str]:
        return sorted({self.storage.resolve(d) for d in vm.allowed_dirs()})

    def outside(self, seen: ImageFacts, allowed: list[str]) -> list[str]:
        """Findings for a file, or the backing file it names, that resolves outside the VM's
        directories (`allowed`, resolved)."""
        findings = []
        for name, below in ((seen.path, None), (seen.backing, seen.path)):
            if name is None:
                continue
            resolved = self.storage.resolve(name)
            if not is_within(resolved, allowed):
                findings.append(outside_finding(name, resolved, below))
        return findings

    def chain_findings(self, vm: VirtualMachine, step: Step, compare: bool = True) -> list[str]:
        """A merge opens the whole chain below the image it writes: every file of that chain,
        as the disk says now, must be there, readable with its recorded formats, and in the
        VM's directories. The walk stops at the first file outside, before opening it.

        `compare` (when an operation is planned): every file of it the merge reads and the
        ledger holds must also be as recorded (`drift`'s rules: a frozen image below that was
        written behind the ledger's back is drift, even at the same size). Not right before a
        step: after a crash, recover must not be stopped by what its own steps changed."""
        if isinstance(step, Commit):
            top = step.top
        elif isinstance(step, Pull):
            top = step.image
        else:
            return []
        try:
            chain = self.storage.inspect_chain(
                top, sorted(vm.allowed_dirs()), recorded_format(vm, top)
            )
        except OutsideAllowedDirs as outside:
            return [outside_finding(outside.path, outside.resolved, outside.below)]
        except StorageError as error:  # a file missing or unreadable anywhere below
            return [f"{top}: its backing chain can't be read ({error})"]
        if not compare:
            return []
        findings = []
        for seen in chain:
            record = vm.images.get(seen.path)
            if record is None or record.missing or seen.path in written_paths(step):
                continue  # what the step writes is checked as such (and may be mid-change)
            changed = record.facts.identity_differs(seen, **frozen_rules(vm, seen.path))
            if changed:
                findings.append(f"{seen.path}: {', '.join(changed)}")
        return findings

    # ---- who else has the files --------------------------------------------------------

    def hard_links(self, paths: Iterable[str]) -> list[str]:
        """An image with another name is not ours alone: never written or deleted."""
        findings = []
        for path in dict.fromkeys(paths):
            if not self.storage.exists(path):
                continue
            links = self.storage.sharing(path).links
            if links > 1:
                findings.append(
                    f"{path}: has {links} hard links (another name for the same file exists); "
                    "it is never written or deleted while it has"
                )
        return findings

    def refuse_in_use(self, vm: VirtualMachine, plan: Plan) -> None:
        """ImageInUse (exit 4) if another process holds an image the plan writes, deletes or
        freezes (a running VM outside libvirt, a qemu-img still running)."""
        written = [p for s in plan.steps if s.destructive for p in written_paths(s)]
        read = [p for s in plan.steps if s.destructive for p in touched_paths(s)]
        # the image a snapshot freezes or a revert abandons: a writer there would go on writing
        frozen = [vm.disks[s.disk] for s in plan.steps if isinstance(s, SetActive)]
        for path, writers_only in (
            *((p, False) for p in dict.fromkeys(written)),
            *((p, True) for p in dict.fromkeys(read + frozen)),
        ):
            if not self.storage.exists(path):
                continue
            seen = self.storage.sharing(path)
            holder = seen.writer if writers_only else seen.reader
            if holder is not None:
                how = "for writing" if seen.writer else "for reading"
                raise ImageInUse(
                    f"another process still holds {path}: {holder} has it open {how} (a VM "
                    "running outside libvirt, or a qemu-img still running)"
                )


def outside_finding(path: str, resolved: str, below: str | None) -> str:
    real = f" (resolves to {resolved})" if resolved != path else ""
    if below is None:
        return f"{path}{real}: outside the VM's allowed directories"
    return f"{below}: backing file {path}{real} is outside the VM's allowed directories; not opened"
