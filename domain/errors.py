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


class DuplicateName(BadInput):
    pass


class BadPath(BadInput):
    """A path that is relative, exists already, goes through a symlink or lies outside the pools."""


class Refused(SnapledgerError):
    """Doing it would lose data, or the ledger disagrees with the disk (exit 3)."""

    exit_code = 3


class BranchPointRefused(Refused):
    pass


class StrategyNotAllowed(Refused):
    pass


class DriftFound(Refused):
    pass


class Conflict(SnapledgerError):
    """Another operation holds the VM or changed the ledger first (exit 4)."""

    exit_code = 4


class OperationInProgress(Conflict):
    pass


class ConcurrentUpdate(Conflict):
    pass


class StorageError(SnapledgerError):
    """A storage adapter could not carry out a step (exit 1)."""
