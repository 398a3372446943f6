"""The libvirt room's refusals and failures: what goes wrong between the ledger and a domain.

Each is a domain error with its exit code (domain/errors.py): a refusal when the domain is not
where the ledger expects it, a failure when a running domain or a job not ours is in the way.
"""

from __future__ import annotations

from snapledger.domain.errors import ImageInUse, LiveStepImpossible, Refused, StorageError


class WrongImage(Refused):
    """The domain runs (or is defined) on another image than the ledger expects at this step of
    an open operation (exit 3): finishing it there could lose the guest's writes."""


class ForeignBlockJob(ImageInUse):
    """A block job snapledger did not start runs on one of the domain's disks (exit 4): libvirt
    runs one job per disk, and a hand-started copy or commit must end first."""


class DomainStopped(StorageError):
    """The domain stopped (destroyed, QEMU ended) while a block job of ours ran on it (exit 4):
    the operation stays open for `recover`, which finishes it from what libvirt and the disks
    say."""

    exit_code = 4


__all__ = ["DomainStopped", "ForeignBlockJob", "LiveStepImpossible", "WrongImage"]
