"""What must hold before anything is recorded or written: the files a user names, the chains
under them, the files the ledger does not know that rest on its images, and drift.

Functions of the storage port and the ledger's view; the service (commands.py) records what they
find (DriftDetected) and refuses.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping

from snapledger.adapters.service.drift import DiskChecks, changed_paths, written_paths
from snapledger.adapters.service.ports import StoragePort
from snapledger.domain.errors import BadInput, BadPath, OutsideAllowedDirs, StorageError
from snapledger.domain.images import ImageFacts
from snapledger.domain.names import check_user_path
from snapledger.domain.steps import CreateOverlay, Plan, Step, touched_paths
from snapledger.domain.vm import VirtualMachine
from snapledger.projections.scope import NO_HOST, in_scope, is_shared, shared_dirs
from snapledger.projections.view import LedgerView


def user_chain(
    storage: StoragePort,
    path: str,
    allowed: Iterable[str],
    known_format: str | None,
    whose: str,
    fix: str,
) -> list[ImageFacts]:
    """The chain of a file the user names: a file that is missing or not an image we can use
    is bad input, not a storage failure. Every file of the chain must resolve inside the
    VM's `allowed` directories; one outside is refused before it is opened, and `fix`
    (with `{dir}`, that file's resolved directory) tells the user what to do. A file the
    ledger holds already keeps its recorded format (`known_format`): only a new one is probed."""
    allowed = sorted(allowed)
    try:
        chain = storage.inspect_chain(path, allowed, known_format)
    except OutsideAllowedDirs as outside:
        advice = fix.format(dir=posixpath.dirname(outside.resolved))
        raise BadPath(f"{outside} of {whose} ({', '.join(allowed)}): {advice}") from None
    except StorageError as error:
        raise BadInput(f"{path} can't be used: {error}") from None
    for above, facts in zip([None, *chain], chain, strict=False):
        second_name = second_name_of(storage, facts.path, None if above is None else above.path)
        if second_name is not None:
            raise BadPath(second_name)
    return chain


def second_name_of(storage: StoragePort, path: str, backing_of: str | None = None) -> str | None:
    """One file, one name: why `path` (a disk, or `backing_of`'s backing file) can't come into
    the ledger, if it goes through a symbolic link; None if it is the file's real name. An image
    is known by its path, so a second name would make a second image of a file already known by
    its real name, which could then be written or deleted under the first one's holders."""
    real = storage.resolve(path)
    if real == path:
        return None
    if backing_of is None:
        return f"{path} goes through a symbolic link (the file is {real}): name the real file"
    return (
        f"{backing_of}'s backing file {path} goes through a symbolic link (the file is {real}): "
        f"rebase it onto the real path first (qemu-img rebase -u -b {real} ...)"
    )


def check_real_dir(storage: StoragePort, directory: str, option: str) -> None:
    """A --pool or --shared directory by its real name (see second_name_of)."""
    real = storage.resolve(directory)
    if real != directory:
        raise BadPath(f"{option} {directory} goes through a symbolic link (it is {real}): name the real directory")


def user_overlays(
    storage: StoragePort, vm: VirtualMachine, overlays: Mapping[str, str] | None
) -> dict[str, str]:
    """The overlay paths a user chose per disk: new files, in the VM's directories, reached
    through no symlink."""
    allowed = vm.allowed_dirs()
    checked = {}
    for disk, path in (overlays or {}).items():
        vm.check_disk(disk)
        checked[disk] = check_user_path(path, allowed)
        parent = posixpath.dirname(checked[disk])
        if storage.resolve(parent) != parent:
            raise BadPath(f"{path} goes through a symlink ({parent} resolves to {storage.resolve(parent)})")
        if storage.exists(checked[disk]):
            raise BadPath(f"{path} exists")
    return checked


def unknown_dependants(
    storage: StoragePort, vm: VirtualMachine, view: LedgerView, latest: Callable[[], LedgerView]
) -> Mapping[str, list[str]]:
    """For each of `vm`'s images, the files in its directories that the ledger does not
    know and whose backing chain reaches it (a user's own overlays): they make it stay.
    The directories of every VM tracked on `vm`'s host are looked in, not only `vm`'s: a user's
    disk that another VM adopted over one of `vm`'s images and then swapped away rests on it
    still, and the ledger has stopped holding it (found by the deep state-machine profile); and
    the shared directories, where other hosts' VMs' files are. Another host's own directories
    are not on this host, and its files at the same paths are not known here.
    `latest` gives the ledger as of after the scan."""
    home = None if vm.home in NO_HOST else vm.home
    shared = tuple(sorted({*shared_dirs(view), *vm.shared}))
    directories = set(vm.allowed_dirs()) | set(shared)
    for other in view.live_vms().values():
        if in_scope(other, home):
            directories |= other.allowed_dirs()
    scan = storage.scan(sorted(directories))
    # Known after the scan: an overlay another process's operation made meanwhile was
    # registered before it was created, so it is never taken for a user's file.
    now = latest()
    known: set[str] = set()
    for other in now.live_vms().values():
        ours = in_scope(other, home)
        known |= {path for path in other.images if ours or is_shared(path, shared)}
    known |= {
        reg.path for reg in now.in_use.values()
        if (home is None or reg.host in (home, *NO_HOST) or is_shared(reg.path, shared))
    }
    known |= set(view.vms[vm.name].images) if vm.name in view.vms else set()
    return _NonEmpty(scan.dependants_of(frozenset(vm.images), known))


class _NonEmpty(Mapping[str, list[str]]):
    """The images some file the ledger does not know rests on: `found`'s keys whose list is
    not empty (each worked out when first read)."""

    def __init__(self, found: Mapping[str, list[str]]) -> None:
        self._found = found

    def __getitem__(self, path: str) -> list[str]:
        files = self._found[path]
        if not files:
            raise KeyError(path)
        return files

    def __iter__(self) -> Iterator[str]:
        return (path for path, files in self._found.items() if files)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def plan_findings(checks: DiskChecks, vm: VirtualMachine, plan: Plan) -> tuple[list[str], list[str]]:
    """What a plan's drift check looks at: the images its destructive steps touch (and what
    a new overlay is made over: a revert's frozen images), and findings about them found
    otherwise (a chain below a merge that is not whole or leaves the VM's directories, a
    written file with another name)."""
    destructive = [s for s in plan.steps if s.destructive]
    builds_on = {s.backing for s in plan.steps if isinstance(s, CreateOverlay)}
    involved = sorted(
        ({p for s in destructive for p in touched_paths(s)} | builds_on) & set(vm.images)
        - set(vm.disks.values())
    )
    extra = [f for s in destructive for f in checks.chain_findings(vm, s)]
    extra += checks.hard_links(p for s in destructive for p in written_paths(s))
    return involved, extra


def step_findings(
    checks: DiskChecks, vm: VirtualMachine, step: Step, dependants: Mapping[str, list[str]]
) -> list[str]:
    """Right before a destructive step: each file is still the one the ledger knows and has no
    other name, every file it opens lies in the VM's directories, and no file the ledger does
    not know has come to rest on what it changes."""
    findings = checks.same_files(vm, step)
    findings += [
        f"{path}: {', '.join(dependants[path])} rests on it (a file the ledger does not know "
        "appeared after this operation was planned); it is not changed while they do"
        for path in changed_paths(step)
        if path in dependants
    ]
    return findings


def drift_refusal(vm_name: str, findings: Iterable[str]) -> str:
    return (
        f"the disk disagrees with the ledger: {'; '.join(findings)} (where the disks are "
        f"right, record them with 'snapledger reconcile {vm_name}'; --dry-run shows what "
        "it would record)"
    )
