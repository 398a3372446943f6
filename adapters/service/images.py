"""The images a VM uses: `adopt` claims a VM's disks and the chains below them, `swap-disk`
puts a user's image in a disk's place, `retire` lets them all go. Each claim and release is an
image registration (registrations.py) saved with the VM's events.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from snapledger.adapters.service import preconditions
from snapledger.adapters.service.registrations import claimed
from snapledger.domain.errors import BadInput, BadPath, DuplicateName
from snapledger.domain.images import ImageFacts, Origin
from snapledger.domain.names import check_disk_target, check_name, check_user_path
from snapledger.domain.vm import VirtualMachine
from snapledger.projections import planners
from snapledger.projections.scope import check_newly_shared

if TYPE_CHECKING:
    from snapledger.adapters.service.commands import Snapledger


def adopt(
    ledger: Snapledger,
    name: str,
    disks: Mapping[str, str],
    pools: Iterable[str] = (),
    domain_xml: str | None = None,
    origins: Mapping[str, Origin] | None = None,
    extend: Callable[[VirtualMachine], None] | None = None,
    shared: Iterable[str] = (),
) -> None:
    """Start tracking VM `name` over `disks` (target -> path) and the chains below them.
    `shared`: directories every host sees at the same path (its files there are one image for
    every host; they are the VM's directories too, like pools).
    `origins` overrides the origin of some chain images (adopt --libvirt: overlays libvirt's
    snapshots made are managed); `extend` records more events of the new VM in the same save."""
    check_name("VM", name)
    if not disks:
        raise BadInput("adopt needs at least one disk (--disk vda=PATH)")
    for target in disks:
        check_disk_target(target)
    paths = {t: check_user_path(p) for t, p in disks.items()}
    if len(set(paths.values())) != len(paths):
        raise BadInput("two disks name the same file")
    pools = sorted({check_user_path(p) for p in pools})
    shared = sorted({check_user_path(p) for p in shared})
    if "/" in shared:  # every file of every host would be one file for all: surely a mistake
        raise BadInput("--shared / would make every path one file for every host: name the shared directory")
    for option, directories in (("--pool", pools), ("--shared", shared)):
        for directory in directories:
            preconditions.check_real_dir(ledger.storage, directory, option)
    ledger.refresh()
    check_newly_shared(ledger.view, shared)
    earlier = ledger.view.vms.get(name)
    if earlier is not None and earlier.retired is None:
        raise DuplicateName(f"VM {name!r} is already in the ledger")
    generation = earlier.generation + 1 if earlier is not None else 1
    images: dict[str, dict[str, object]] = {}
    allowed = {posixpath.dirname(p) for p in paths.values()} | set(pools) | set(shared)
    for path in sorted(paths.values()):
        chain = user_chain(
            ledger, path, allowed, f"VM {name!r}",
            "add --pool {dir} (or --shared {dir}) if the VM may use files there",
        )
        planners.check_new_disk_chain(
            ledger.view, name, [f.path for f in chain], home=ledger.host, also_shared=shared
        )
        for i, facts in enumerate(chain):
            if facts.path in images:
                if i == 0 or images[facts.path]["origin"] == Origin.ADOPTED.value:
                    raise BadInput(f"{facts.path} is both a disk and below another disk")
                continue
            origin = Origin.ADOPTED if i == 0 else Origin.FOUND
            origin = (origins or {}).get(facts.path, origin)
            images[facts.path] = {**facts.to_dict(), "origin": origin.value}
    vm = VirtualMachine(
        name=name,
        disks=paths,
        images=list(images.values()),
        pools=pools,
        domain_xml=domain_xml,
        at=ledger.clock(),
        confined=True,  # chains are checked against the disks' dirs and pools from now on
        generation=generation,
        home=ledger.host or "",
        shared=shared,
    )
    if extend is not None:
        extend(vm)
    registry = ledger.registry(vm)
    ledger.save(vm, *(claimed(registry, path, name) for path in images))


def swap_disk(ledger: Snapledger, vm_name: str, disk: str, path: str) -> None:
    vm, view = ledger.prepare(vm_name, swapping=disk)
    vm.check_disk(disk)
    chain = user_chain(
        ledger, check_user_path(path), vm.allowed_dirs(), f"VM {vm_name!r}",
        "put the image in one of them (a VM's directories are its disks' and the --pool "
        "directories given at adopt)",
    )
    planners.plan_swap(view, vm_name, disk, [f.path for f in chain])
    # Every check (the aggregate's, the claims') before libvirt is touched: a refused swap
    # must not leave the domain defined on, say, a snapshot's frozen image.
    vm.swap_disk(disk, chain, ledger.clock())
    registry = ledger.registry(vm)
    claims = [claimed(registry, f.path, vm_name) for f in chain]
    if vm.libvirt is None:
        ledger.save(vm, *claims)
        return
    hypervisor = ledger.operations.required_hypervisor(vm)
    previous = hypervisor.swap(vm, disk, chain[0].path)  # libvirt uses it, or is redefined
    vm.record_definition(hypervisor.current_definition(vm), ledger.clock())
    try:
        ledger.save(vm, *claims)
    except BaseException:
        if previous is not None:  # not recorded: put the definition back as it was
            hypervisor.restore_definition(vm, previous)
        raise


def retire(ledger: Snapledger, vm_name: str) -> list[str]:
    """End tracking of `vm_name`: its history stays, its images are let go (nothing is
    deleted). Returns the files snapledger made that are left on disk."""
    ledger.refresh()
    vm = ledger.idle(vm_name)
    left_behind = sorted(
        path for path, record in vm.images.items()
        if record.origin is Origin.MANAGED and ledger.storage.exists(path)
    )
    vm.retire(ledger.clock())
    released = []
    registry = ledger.registry(vm)
    for path in sorted(vm.images):
        registration = registry.find(path)
        if registration is not None:
            registration.end_use(vm_name, deleted=False)
            released.append(registration)
    ledger.save(vm, *released)
    return left_behind


def user_chain(
    ledger: Snapledger, path: str, allowed: Iterable[str], whose: str, fix: str
) -> list[ImageFacts]:
    """The chain of a file the user names (preconditions.user_chain), which must exist and
    must not be the ledger's own file."""
    if not ledger.storage.exists(path):
        raise BadPath(f"{path} does not exist")
    if _is_the_ledger(ledger, path):
        raise BadPath(f"{path} is the ledger's own file, not a disk image")
    known = [v.images[path] for v in ledger.view.live_vms().values() if path in v.images]
    known_format = known[0].facts.format if known else None
    return preconditions.user_chain(ledger.storage, path, allowed, known_format, whose, fix)


def _is_the_ledger(ledger: Snapledger, path: str) -> bool:
    """A file this process has open (the ledger's SQLite files) is never taken for a disk."""
    try:
        seen = os.stat(path)
    except OSError:
        return False
    return (seen.st_dev, seen.st_ino) in ledger.runners.files_open_here()
