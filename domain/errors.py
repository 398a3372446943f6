"""One hierarchy of errors; each carries the exit code the CLI contract gives it."""

from __future__ import annotations


class SnapledgerError(Exception):
    """Base of every error snapledger raises on purpose."""

    exit_code = 1


class BadInput(SnapledgerError):
    """The request itself is wrong; nothing was changed (exit 2)."""

    exit_code = 2


class BadName(BadInput):
    pass


class UnknownVm(BadInput):
    pass


class UnknownSnapshot(BadInput):
    pass


class UnknownDisk(BadInput):
    pass


class UnknownImage(BadInput):
    """The VM holds no image at that path."""


class DuplicateName(BadInput):
    pass


class BadPath(BadInput):
    """A path that is relative, exists already, goes through a symlink or lies outside the pools."""


class BadStoreUrl(BadInput):
    """A store URL that names no store: its syntax, a NUL, a port out of range, a directory or
    a device where the ledger file should be (exit 2)."""


class DomainGone(BadInput):
    """The hypervisor has no domain of that name (exit 2)."""


class Refused(SnapledgerError):
    """Doing it would lose data, or the ledger disagrees with the disk (exit 3)."""

    exit_code = 3


class LiveStepImpossible(Refused):
    """A planned step can't be done while the domain runs (a pull into a backing file of a
    running disk: libvirt pulls only into the active image)."""


class BranchPointRefused(Refused):
    pass


class StrategyNotAllowed(Refused):
    pass


class DriftFound(Refused):
    pass


class LedgerDamaged(Refused):
    """A stored event can't be read back: the store was changed outside snapledger."""


class TamperFound(Refused):
    """verify found the hash chain broken, or the expected head missing."""


class Conflict(SnapledgerError):
    """Another operation holds the VM or changed the ledger first (exit 4)."""

    exit_code = 4


class OperationInProgress(Conflict):
    pass


class HomeElsewhere(Conflict):
    """The VM lives on another host (its home): only that host changes it or reads its disks."""


class ConcurrentUpdate(Conflict):
    pass


class StoreUnusable(SnapledgerError):
    """The store can't serve as a ledger: not a snapledger ledger, damaged, or the system
    refused to read or write it (exit 1). The tool's own trouble, never drift."""


class MissingExtra(SnapledgerError):
    """An optional part (libvirt-python, psycopg) is not importable (exit 1)."""

    def __init__(self, what: str, extra: str, error: BaseException) -> None:
        super().__init__(
            f"{what} is needed and can't be imported ({type(error).__name__}: {error}); "
            f"install it with: pip install 'snapledger[{extra}]'"
        )


class StorageError(SnapledgerError):
    """A storage adapter could not carry out a step (exit 1)."""


class ToolMissing(SnapledgerError):
    """A program snapledger needs (qemu-img) can't be run: the tool's own environment, never
    drift; nothing was done (exit 1)."""


class LedgerUnwritable(SnapledgerError):
    """The ledger could not record an event (its filesystem is full, read-only...): the tool's
    own environment (exit 1). What was recorded before stays; `recover` finishes the rest."""


class OutsideAllowedDirs(StorageError):
    """A file of a backing chain resolves (symlinks followed) outside the directories it was
    confined to. Raised before the file is opened."""

    def __init__(self, path: str, resolved: str, below: str | None) -> None:
        self.path = path  # as the chain names it
        self.resolved = resolved  # with every symlink resolved
        self.below = below  # the image whose backing it is (None: the top of the chain)
        where = f" (backing file of {below})" if below is not None else ""
        real = f", resolves to {resolved}" if resolved != path else ""
        super().__init__(f"{path}{where}{real} is outside the allowed directories")


class ImageInUse(OperationInProgress, StorageError):
    """Another process (a running VM, a qemu-img still running) holds a lock on an image, so
    qemu-img could not open it and did nothing (exit 4)."""
