"""Which images one host's planning sees (semantics.md, "Many hosts, one ledger").

An image is known by its path on storage every host sees at the same path (the directories some
VM declared `--shared` at adopt), and by (home host, path) anywhere else. Planning for a VM looks
at the ledger through its home host's eyes: every image of the VMs living on that host, and the
images other hosts' VMs hold on shared storage. Within that scope a path names one file again,
so the image DAG and the planners keep keying images by path; two hosts' files at the same local
path never meet.
"""

from __future__ import annotations

from collections.abc import Iterable

from snapledger.domain.errors import Refused
from snapledger.domain.ledger_hash import UNKNOWN_HOST
from snapledger.domain.names import is_within
from snapledger.domain.vm import VirtualMachine

from .view import LedgerView

NO_HOST = ("", UNKNOWN_HOST)  # recorded without a host: part of every host's scope


def shared_dirs(view: LedgerView) -> tuple[str, ...]:
    """Every directory a tracked VM declared shared: shared for the whole ledger (a file there is
    one file for every host, whoever declared it)."""
    return tuple(sorted({d for vm in view.live_vms().values() for d in vm.shared}))


def is_shared(path: str, dirs: tuple[str, ...]) -> bool:
    return is_within(path, dirs)


def in_scope(vm: VirtualMachine, home: str | None) -> bool:
    """Whether all of `vm`'s images are seen by planning on host `home` (None, or no host: the
    whole ledger, as on one host)."""
    return home is None or home in NO_HOST or vm.lives_on(home)


def registration_scope(path: str, home: str | None, dirs: tuple[str, ...]) -> str | None:
    """Whose registrations of `path` count for host `home`: None for every host's (a shared image,
    or no host given), else `home`'s own (and those made without a host)."""
    if home is None or home in NO_HOST or is_shared(path, dirs):
        return None
    return home


def check_newly_shared(view: LedgerView, dirs: Iterable[str]) -> None:
    """A directory is shared from the start: declaring one shared that already holds a tracked
    VM's own image (known by its host and path) would make one image of what may be several
    hosts' files, and let a VM move onto storage its new host can't see. Refused (exit 3)."""
    already = shared_dirs(view)
    for directory in sorted(set(dirs)):
        if is_shared(directory, already):
            continue
        for vm in view.live_vms().values():
            own = sorted(p for p in vm.images if is_within(p, (directory,)) and not is_shared(p, already))
            if own:
                raise Refused(
                    f"--shared {directory}: {own[0]} there is already host "
                    f"{vm.home or UNKNOWN_HOST}'s own image (VM {vm.name}); a directory is shared "
                    "from its first adopt on, or never"
                )
